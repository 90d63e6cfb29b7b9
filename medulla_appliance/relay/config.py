"""The schema of /etc/medulla/relay.ini (+ relay.ini.local, relay.d/*.ini)."""

from dataclasses import replace

from ..core.config import Key, Schema
from ..core.xmpp.link import link_sections

DEFAULT_CONFIG = "/etc/medulla/relay.ini"

_LINK = link_sections(password_file="/etc/medulla/relay-xmpp.password",
                      private_key="/var/lib/medulla/relay/relay.key",
                      jid_example="relay-lyon@medulla.local/relay")
# Download tokens are checked with the master's key: needed with or without a link.
_LINK["keys"]["master_public_key"] = replace(
    _LINK["keys"]["master_public_key"], default=None, required=True,
    help="the master's public key (ed25519:...); download tokens, and the\n"
         "master's answers, must be signed by it")

RELAY_SCHEMA = Schema({
    "global": {
        "log_level": Key("choice", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="least severe level logged to the journal"),
    },
    "http": {
        "listen": Key("endpoint", "tcp:9990",
                      help="Twisted endpoint agents download packages from; for TLS\n"
                           "either 'ssl:9990:privateKey=KEY.pem:certKey=CERT.pem' or\n"
                           "'ssl:9990' with certificate and private_key below"),
        "certificate": Key("path", None,
                           help="PEM certificate (chain) for an 'ssl:' listen endpoint"),
        "private_key": Key("path", None,
                           help="PEM private key for an 'ssl:' listen endpoint"),
        "idle_timeout": Key("duration", "60s", min=1, max=3600,
                            help="close a connection idle, or a download stalled, this long"),
        "sendfile": Key("bool", True,
                        help="plain TCP: let the kernel copy files to sockets (sendfile);\n"
                             "'no' copies through Python (TLS always does)"),
    },
    "packages": {
        "root": Key("path", "/var/lib/medulla/packages",
                    help="ROOT/PACKAGE_ID/descriptor.json and its files; a package is\n"
                         "served once ROOT/.complete/PACKAGE_ID exists"),
        "max_downloads": Key("int", 1000, min=1, max=100000,
                             help="downloads served at once; more are told to retry (503)"),
        "max_downloads_per_client": Key("int", 8, min=1, max=10000,
                                        help="downloads one client address may run at once"),
    },
    "status": {
        "interval": Key("duration", "60s", min=5, max=86400,
                        help="with [xmpp] jid set: send relay.status (load, packages\n"
                             "complete) to the master this often"),
        "package_url": Key("str", "",
                           help="URL agents download this relay's packages from, told to\n"
                                "the master (http(s)://HOST:9990); empty: the master's\n"
                                "[deploy] relay_urls must name this relay"),
    },
    **_LINK,
})
SCHEMA = RELAY_SCHEMA


def listen_endpoint(cfg) -> str:
    """The ``[http] listen`` endpoint string, with the certificate and key added for
    ``ssl:``; ValueError when they do not fit together."""
    http = cfg["http"]
    listen, cert, key = http["listen"], http["certificate"], http["private_key"]
    if cert is None and key is None:
        return listen
    if not listen.startswith("ssl:"):
        raise ValueError("[http] certificate and private_key need an 'ssl:' listen endpoint")
    if cert is None or key is None:
        raise ValueError("[http] certificate and private_key go together")
    if "privateKey=" in listen or "certKey=" in listen:
        raise ValueError("[http] listen already names a key or certificate; "
                         "drop certificate and private_key")
    return "%s:privateKey=%s:certKey=%s" % (listen, _escape(key), _escape(cert))


def _escape(path: str) -> str:
    # Endpoint strings split on ':' and '=' and unescape '\'.
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
