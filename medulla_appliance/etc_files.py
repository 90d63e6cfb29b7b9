"""Which shipped INI file (under etc/) documents which schema."""

from medulla_agent.config import SCHEMA as AGENT_SCHEMA

from .guard.config import SCHEMA as GUARD_SCHEMA
from .master.config import SCHEMA as MASTER_SCHEMA
from .pxe.config import SCHEMA as PXE_SCHEMA
from .relay.config import RELAY_SCHEMA
from .syncthing.config import SCHEMA as SYNCTHING_SCHEMA

ETC_FILES = {
    "master.ini": MASTER_SCHEMA,        # -> /etc/medulla/master.ini
    "agentconf.ini": AGENT_SCHEMA,      # -> /etc/medulla-agent/agentconf.ini
    "guard.ini": GUARD_SCHEMA,          # -> /etc/medulla/guard.ini
    "relay.ini": RELAY_SCHEMA,          # -> /etc/medulla/relay.ini
    "pxe.ini": PXE_SCHEMA,              # -> /etc/medulla/pxe.ini
    "syncthing.ini": SYNCTHING_SCHEMA,  # -> /etc/medulla/syncthing.ini
}
