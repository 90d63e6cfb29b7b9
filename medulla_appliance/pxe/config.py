"""The schema of /etc/medulla/pxe.ini (+ pxe.ini.local, pxe.d/*.ini)."""

import ipaddress

from ..core.config import ConfigError, Key, Schema
from .tftp.options import MAX_BLKSIZE

DEFAULT_CONFIG = "/etc/medulla/pxe.ini"

SCHEMA = Schema({
    "global": {
        "log_level": Key("choice", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="least severe level logged to the journal"),
    },
    "tftp": {
        "listen": Key("list", "udp:69:interface=::",
                      help="where TFTP listens: udp:PORT[:interface=ADDRESS], comma-separated;\n"
                           "'::' serves IPv6 and IPv4 (dual stack), '0.0.0.0' IPv4 only"),
        "root": Key("path", "/var/lib/medulla/tftpboot",
                    help="folder served read-only; no request can leave it"),
        "max_sessions": Key("int", 256, min=1, max=10000,
                            help="transfers running at once, all clients together"),
        "max_sessions_per_client": Key("int", 8, min=1, max=10000,
                                       help="transfers running at once for one client address"),
        "timeout": Key("duration", "1s", min=0.01, max=255,
                       help="first retransmission delay when the client asks none (doubles\n"
                            "at each retry, up to 16s)"),
        "retries": Key("int", 5, min=0, max=50,
                       help="retransmissions in a row without an ACK before giving up"),
        "max_blksize": Key("int", MAX_BLKSIZE, min=512, max=MAX_BLKSIZE,
                           help="largest block size granted (blksize option); 1468 keeps\n"
                                "blocks inside one Ethernet frame"),
        "max_windowsize": Key("int", 64, min=1, max=1024,
                              help="largest window granted (windowsize option, RFC 7440)"),
        "verbose": Key("bool", False,
                       help="log every read request ('RRQ from ADDRESS filename NAME') and\n"
                            "every finished transfer"),
        "menu_url": Key("str", "http://{server}/medulla/bootmenu",
                        help="boot menu that the generated autoexec.ipxe chains to, with\n"
                             "?mac=...&uuid=...&srv=...; {server} is our address as the client\n"
                             "reached it; empty: no generated autoexec.ipxe"),
    },
})


def parse_listen(item: str) -> tuple[int, str]:
    """``udp:PORT[:interface=ADDRESS]`` -> (port, address); raises ValueError."""
    kind, _, rest = item.partition(":")
    if kind != "udp":
        raise ValueError("expected udp:PORT[:interface=ADDRESS], got %r" % item)
    port_text, _, params = rest.partition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("bad UDP port in %r" % item)
    interface = "::"
    if params:
        name, sep, value = params.partition("=")
        if name != "interface" or not sep:
            raise ValueError("expected interface=ADDRESS after the port in %r" % item)
        # Twisted's own escaping (interface=\:\:1) and the plain form both work.
        interface = value.replace("\\:", ":")
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError("interface %r is not an IP address" % interface) from None
    return int(port_text), interface


def listen_addresses(cfg) -> list[tuple[int, str]]:
    """The (port, address) pairs of ``[tftp] listen``; raises ConfigError naming the line."""
    items = cfg["tftp"]["listen"]
    try:
        if not items:
            raise ValueError("at least one address is needed")
        return [parse_listen(item) for item in items]
    except ValueError as exc:
        file, line = cfg.origin("tftp", "listen")
        raise ConfigError(file, line, "tftp", "listen", str(exc)) from None
