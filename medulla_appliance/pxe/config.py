"""The schema of /etc/medulla/pxe.ini (+ pxe.ini.local, pxe.d/*.ini)."""

import ipaddress
import os
import re

from ..core.config import ConfigError, Key, Schema
from ..core.xmpp.link import link_sections
from .dhcp.proxy import settings_from_config as proxydhcp_settings
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
    "proxydhcp": {
        "enabled": Key("bool", False,
                       help="answer PXE clients of allowed_macs with next-server and boot\n"
                            "file, beside the site's DHCP server (which still gives the\n"
                            "addresses); no: the DHCP server's options 66/67 do it"),
        "interface": Key("str", "",
                         help="network interface answered on (UDP 67 and 4011), like eth0"),
        "server_address": Key("str", "",
                              help="IPv4 address sent as next-server (our TFTP server);\n"
                                   "empty: the interface's own IPv4 address"),
        "allowed_macs": Key("mac_list", "",
                            help="the only machines answered, comma-separated; escaped\n"
                                 "colons (00\\:1a\\:...) work too; empty: nobody"),
        "bootfile_bios": Key("str", "undionly.kpxe",
                             help="boot file for BIOS PXE ROMs (architecture 0);\n"
                                  "empty: no answer"),
        "bootfile_efi32": Key("str", "",
                              help="boot file for 32-bit UEFI (architecture 6)"),
        "bootfile_efi64": Key("str", "ipxe.efi",
                              help="boot file for x86-64 UEFI (architectures 7 and 9)"),
        "bootfile_arm64": Key("str", "",
                              help="boot file for ARM64 UEFI (architecture 11)"),
        "ipxe_bootfile": Key("str", "autoexec.ipxe",
                             help="what a client already running iPXE gets instead (user\n"
                                  "class iPXE): the script, so iPXE never loads iPXE again"),
    },
    "http": {
        "listen": Key("list", "tcp:80:interface=::",
                      help="where boot menus are served (GET /medulla/bootmenu, and Medulla's\n"
                           "/mmc/imaging/bootmenu.php): tcp:PORT[:interface=ADDRESS],\n"
                           "comma-separated; keep it in step with [tftp] menu_url; empty: off"),
        "server_name": Key("str", "",
                           help="this imaging server's name for the master (its default menu);\n"
                                "empty: from [xmpp] jid (relay-NAME@... gives NAME, the master\n"
                                "host's account gives 'master')"),
        "master_timeout": Key("duration", "5s", min=0.1, max=60,
                              help="wait this long for the master's answer, then serve the last\n"
                                   "menu it gave (or a built-in one that boots the local disk)"),
    },
    **link_sections(password_file="/etc/medulla/relay-xmpp.password",
                    private_key="/var/lib/medulla/relay/relay.key",
                    jid_example="master@medulla.local/pxe on the master host,\n"
                                "relay-lyon@medulla.local/pxe on a relay"),
})


def parse_listen(item: str, protocol: str = "udp") -> tuple[int, str]:
    """``udp:PORT[:interface=ADDRESS]`` (or ``tcp:...``) -> (port, address); raises
    ValueError."""
    kind, _, rest = item.partition(":")
    if kind != protocol:
        raise ValueError("expected %s:PORT[:interface=ADDRESS], got %r" % (protocol, item))
    port_text, _, params = rest.partition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("bad %s port in %r" % (protocol.upper(), item))
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


_SERVER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def http_addresses(cfg) -> list[tuple[int, str]]:
    """The (port, address) pairs of ``[http] listen`` (none: HTTP is off); raises
    ConfigError naming the line."""
    try:
        return [parse_listen(item, "tcp") for item in cfg["http"]["listen"]]
    except ValueError as exc:
        file, line = cfg.origin("http", "listen")
        raise ConfigError(file, line, "http", "listen", str(exc)) from None


def server_name(cfg) -> str:
    """This imaging server's name: ``[http] server_name``, else NAME of ``relay-NAME@``,
    else ``master`` (the master host's daemons use the master's own account)."""
    name = cfg["http"]["server_name"]
    if not name:
        local = cfg["xmpp"]["jid"].partition("@")[0]
        name = local[len("relay-"):] if local.startswith("relay-") else "master"
    if not _SERVER_NAME_RE.fullmatch(name):
        file, line = cfg.origin("http", "server_name")
        raise ConfigError(file, line, "http", "server_name",
                          "%r: letters, digits, '.', '_' and '-'" % name)
    return name


def check(cfg) -> None:
    """What the schema cannot check alone; ConfigError (exit 78) on the first problem."""
    listen_addresses(cfg)
    http_addresses(cfg)
    server_name(cfg)
    if cfg["proxydhcp"]["enabled"]:
        proxydhcp_settings(cfg)
    root = cfg["tftp"]["root"]
    if not os.path.isdir(root):
        file, line = cfg.origin("tftp", "root")
        raise ConfigError(file, line, "tftp", "root", "%s is not a folder" % root)
