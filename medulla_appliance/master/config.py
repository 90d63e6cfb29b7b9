"""The schema of /etc/medulla/master.ini (+ master.ini.local, master.d/*.ini)."""

from ..core.config import Key, Schema

DEFAULT_CONFIG = "/etc/medulla/master.ini"

SCHEMA = Schema({
    "global": {
        "log_level": Key("choice", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="least severe level logged to the journal"),
    },
    "xmpp": {
        "jid": Key("str", "master@medulla.local/master",
                   help="the master's full JID; agents obey only this JID"),
        "password_file": Key("secret_file", "/etc/medulla/master-xmpp.password",
                             help="file (mode 0600) holding the XMPP account's password"),
        "server": Key("str", "127.0.0.1", help="XMPP server to connect to"),
        "port": Key("int", 5222, min=1, max=65535, help="its client-to-server port"),
        "ca_file": Key("path", "/etc/medulla/pki/ca.pem",
                       help="CA that signed the XMPP server's certificate"),
        "keepalive_interval": Key("duration", "30s", min=1, max=3600,
                                  help="ping the XMPP server this often"),
        "keepalive_timeout": Key("duration", "10s", min=1, max=600,
                                 help="no answer within this: reconnect"),
        "register_account": Key("bool", False,
                                help="create the account by in-band registration if missing"),
    },
    "keys": {
        "private_key": Key("path", "/var/lib/medulla/master/master.key",
                           help="the master's Ed25519 signing key, created at first start"),
        "enrolment_key_file": Key("secret_file", "/etc/medulla/enrolment.key",
                                  help="the 32-character key every agent config carries"),
    },
    "store": {
        "url": Key("str", "sqlite:/var/lib/medulla/master/master.sqlite",
                   help="sqlite:/absolute/path (MariaDB comes later)"),
    },
    "api": {
        "listen": Key("endpoint", "tcp:7080:interface=127.0.0.1",
                      help="Twisted endpoint of the admin API (keep it on loopback)"),
        "token_file": Key("path", "/var/lib/medulla/master/api-token",
                          help="bearer token for medullactl, created 0600 at first start"),
    },
    "presence": {
        "ping_after": Key("duration", "15s", min=1, max=3600,
                          help="ping an online agent not heard from for this long"),
        "ping_timeout": Key("duration", "10s", min=1, max=600,
                            help="no answer to the ping within this: offline"),
        "max_pings_per_second": Key("int", 100, min=1, max=100000,
                                    help="at most this many liveness pings a second (a big "
                                         "fleet then takes longer than ping_after to sweep)"),
        "reconcile_after": Key("duration", "20s", min=1, max=3600,
                               help="after (re)connecting, machines that sent no presence "
                                    "within this are marked offline"),
    },
    "registry": {
        "blacklisted_mac_addresses": Key(
            "mac_list", "00\\:00\\:00\\:00\\:00\\:00", always=("00:00:00:00:00:00",),
            help="MACs shared by many machines (VPN adapters...): never used to tell "
                 "machines apart; 00:00:00:00:00:00 is always in the list"),
        "max_registrations_per_second": Key(
            "int", 200, min=1, max=100000,
            help="above this rate agents are told to come back later (ret 429)"),
    },
    "deploy": {
        "packages_root": Key("path", "/var/lib/medulla/packages",
                             help="the package store (shared to relays by medulla-syncthing)"),
        "relay_urls": Key("list", "master http://127.0.0.1:9990",
                          help="where agents of each relay download packages: "
                               "'NAME URL', ...; 'master' is this host's medulla-relay"),
        "pass_interval": Key("duration", "1s", min=0.1, max=60,
                             help="how often deployments are scheduled"),
        "missing_agent_after": Key(
            "duration", "15m", min=1, max=7 * 24 * 3600,
            help="a started deployment whose machine stays offline this long ends in ABORT "
                 "MISSING AGENT (a result the agent sends later still replaces it); keep "
                 "it above a reboot's length"),
    },
    "assessor": {
        "relays": Key("list", "", help="relays agents may be sent to: 'NAME HOST:PORT', ..."),
        "rules": Key("list", "",
                     help="first match wins: 'subnet CIDR RELAY' or 'tag TAG RELAY', ..."),
        "default_relay": Key("str", "master",
                             help="relay for agents no rule matches; 'master' = this server"),
    },
})
