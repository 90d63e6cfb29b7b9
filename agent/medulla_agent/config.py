"""The schema of /etc/medulla-agent/agentconf.ini (+ agentconf.ini.local)."""

from medulla_appliance.core.config import Key, Schema

DEFAULT_CONFIG = "/etc/medulla-agent/agentconf.ini"
ENROLMENT_KEY_CHARS = 32

SCHEMA = Schema({
    "global": {
        "log_level": Key("choice", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="least severe level logged (DEBUG to troubleshoot)"),
    },
    "connection": {
        "server": Key("str", required=True, help="the master's (or relay's) XMPP server"),
        "port": Key("int", 5222, min=1, max=65535, help="its XMPP client port"),
        "domain": Key("str", "medulla.local", help="the XMPP domain of the installation"),
        "ca_file": Key("path", "/etc/medulla-agent/ca.pem",
                       help="the installation's CA: the server's certificate must chain to it"),
        "max_reconnect_delay": Key("duration", "30s", min=1, max=3600,
                                   help="longest wait between reconnection attempts"),
        "keepalive_interval": Key("duration", "60s", min=1, max=3600,
                                  help="ping the XMPP server this often"),
        "keepalive_timeout": Key("duration", "20s", min=1, max=600,
                                 help="no answer within this: the network is gone, reconnect"),
    },
    "enrolment": {
        "enrolment_key": Key("secret", required=True,
                             help="the installation's 32-character enrolment key"),
        "master_public_key": Key("str", required=True,
                                 help="ed25519:... the master's public key; the agent obeys "
                                      "only envelopes it signed"),
        "master_jid": Key("str", "", help="the master's JID (default master@DOMAIN/master)"),
    },
    "agent": {
        "state_dir": Key("path", "/var/lib/medulla-agent",
                         help="the agent's key and state (created 0700)"),
        "inventory_tag": Key("str", "", help="tag the assessor may use to pick a relay"),
        "max_package_bytes": Key("int", 10 * 1024 ** 3, min=1,
                                 help="largest package the agent downloads (bytes)"),
    },
})
