"""Which shipped INI file (under etc/) documents which schema."""

from medulla_agent.config import SCHEMA as AGENT_SCHEMA

from .master.config import SCHEMA as MASTER_SCHEMA

ETC_FILES = {
    "master.ini": MASTER_SCHEMA,        # -> /etc/medulla/master.ini
    "agentconf.ini": AGENT_SCHEMA,      # -> /etc/medulla-agent/agentconf.ini
}
