"""The schema of /etc/medulla/syncthing.ini (+ syncthing.ini.local, syncthing.d/*.ini), and
the typed settings the controller is built from."""

import os
import re
import socket
from dataclasses import dataclass
from xml.etree import ElementTree

from ..core.config import Key, Schema
from ..core.xmpp.link import link_sections

DEFAULT_CONFIG = "/etc/medulla/syncthing.ini"
FOLDER_ID = "medulla-packages"
ROLES = ("master", "relay")

_DEVICE_ID_RE = re.compile(r"[A-Z2-7]{7}(-[A-Z2-7]{7}){7}")
_PEER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ADDRESS_RE = re.compile(r"(tcp[46]?|quic[46]?|relay)://\S+|dynamic")

SCHEMA = Schema({
    "global": {
        "log_level": Key("choice", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="least severe level logged to the journal"),
    },
    "syncthing": {
        "role": Key("choice", required=True, choices=ROLES,
                    help="master: the packages folder is send-only here; relay: receive-only"),
        "name": Key("str", "",
                    help="this node's name in notifications; empty: from [xmpp] jid\n"
                         "(relay-NAME@...), else the host name"),
        "api_url": Key("str", "http://127.0.0.1:8384",
                       help="Syncthing's GUI/REST address (keep it on loopback)"),
        "api_key_file": Key("secret_file", "/etc/medulla/syncthing-api.key",
                            help="file (mode 0600) holding Syncthing's API key"),
        "config_xml": Key("path", None,
                          help="Syncthing's config.xml (e.g. /var/lib/syncthing/config.xml):\n"
                               "its <apikey> is used when api_key_file does not exist"),
        "packages_root": Key("path", "/var/lib/medulla/packages",
                             help="the shared folder: PACKAGE_ID/descriptor.json and files"),
        "request_timeout": Key("duration", "30s", min=1, max=600,
                               help="a REST call not answered within this fails"),
        "resync_interval": Key("duration", "5m", min=5, max=86400,
                               help="re-check every package this often, events or not"),
        "settle_delay": Key("duration", "500ms", min=0, max=60,
                            help="wait this long after Syncthing events before re-checking"),
        "rescan_interval": Key("duration", "1h", min=0, max=604800,
                               help="Syncthing's full rescan of the folder; 0 disables"),
        "watch_delay": Key("duration", "10s", min=1, max=3600,
                           help="Syncthing gathers file changes for this long before a scan"),
        "revert_local_changes": Key("bool", True,
                                    help="relay: undo files changed by hand in the packages\n"
                                         "folder so it matches the master again"),
    },
    "devices": {
        "peers": Key("list", "",
                     help="'NAME DEVICE-ID tcp://HOST:22000 [more addresses]', ...: on the\n"
                          "master every relay, on a relay the master"),
        "listen": Key("list", "tcp://0.0.0.0:22000",
                      help="Syncthing's sync listen addresses"),
        "global_discovery": Key("bool", False, help="announce to Syncthing's global discovery"),
        "local_discovery": Key("bool", False, help="LAN broadcast discovery"),
        "relays": Key("bool", False, help="use Syncthing's public relays"),
        "nat": Key("bool", False, help="UPnP/NAT-PMP port mapping"),
    },
    **link_sections(password_file="/etc/medulla/relay-xmpp.password",
                    private_key="/var/lib/medulla/relay/relay.key",
                    jid_example="relay-lyon@medulla.local/syncthing"),
})


@dataclass(frozen=True)
class Peer:
    """A Syncthing device we share the packages folder with."""

    name: str
    device_id: str
    addresses: tuple[str, ...]


def parse_peer(text: str) -> Peer:
    """``NAME DEVICE-ID ADDRESS [ADDRESS...]``; ValueError saying what is wrong."""
    parts = text.split()
    if len(parts) < 3:
        raise ValueError(f"expected 'NAME DEVICE-ID tcp://HOST:PORT', got {text!r}")
    name, device_id, addresses = parts[0], parts[1].upper(), tuple(parts[2:])
    if not _PEER_NAME_RE.fullmatch(name):
        raise ValueError(f"bad peer name {name!r}: letters, digits, '.', '_' and '-'")
    if not _DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError(f"{name}: bad device ID {parts[1]!r} (8 groups of 7 characters)")
    for address in addresses:
        if not _ADDRESS_RE.fullmatch(address):
            raise ValueError(f"{name}: bad address {address!r}, expected tcp://HOST:PORT")
    return Peer(name, device_id, addresses)


def node_name(cfg) -> str:
    """This node's name: ``[syncthing] name``, else NAME of ``relay-NAME@`` in the JID,
    else the short host name."""
    name = cfg["syncthing"]["name"]
    if name:
        return name
    local = cfg["xmpp"]["jid"].partition("@")[0]
    if local:
        return local[len("relay-"):] if local.startswith("relay-") else local
    return socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class Settings:
    """What the controller needs from the configuration, checked."""

    role: str
    name: str
    packages_root: str
    peers: tuple[Peer, ...]
    listen: tuple[str, ...]
    global_discovery: bool = False
    local_discovery: bool = False
    relays: bool = False
    nat: bool = False
    rescan_interval: int = 3600
    watch_delay: int = 10
    revert_local_changes: bool = True
    settle_delay: float = 0.5
    resync_interval: float = 300.0
    folder_id: str = FOLDER_ID

    @classmethod
    def from_config(cls, cfg) -> "Settings":
        st, devices = cfg["syncthing"], cfg["devices"]
        peers = []
        for number, text in enumerate(devices["peers"], 1):
            try:
                peers.append(parse_peer(text))
            except ValueError as exc:
                raise ValueError(f"[devices] peers: item {number}: {exc}") from None
        names = [p.name for p in peers]
        ids = [p.device_id for p in peers]
        if len(set(names)) != len(names) or len(set(ids)) != len(ids):
            raise ValueError("[devices] peers: a name or device ID is listed twice")
        return cls(role=st["role"], name=node_name(cfg),
                   packages_root=st["packages_root"].rstrip("/") or "/",
                   peers=tuple(peers), listen=tuple(devices["listen"]),
                   global_discovery=devices["global_discovery"],
                   local_discovery=devices["local_discovery"], relays=devices["relays"],
                   nat=devices["nat"], rescan_interval=int(st["rescan_interval"]),
                   watch_delay=max(1, int(st["watch_delay"])),
                   revert_local_changes=st["revert_local_changes"],
                   settle_delay=st["settle_delay"], resync_interval=st["resync_interval"])

    def peer_by_device(self, device_id: str) -> Peer | None:
        for peer in self.peers:
            if peer.device_id == device_id:
                return peer
        return None


def read_api_key(cfg) -> str:
    """Syncthing's API key: ``api_key_file`` if it exists, else the ``<apikey>`` of
    ``config_xml``; raises ConfigError (api_key_file) or ValueError (config_xml)."""
    st = cfg["syncthing"]
    if not st["config_xml"] or (st["api_key_file"] and os.path.exists(st["api_key_file"])):
        return cfg.read_secret("syncthing", "api_key_file")
    return api_key_from_config_xml(st["config_xml"])


def api_key_from_config_xml(path: str) -> str:
    """The ``<gui><apikey>`` of a Syncthing config.xml; ValueError naming the file."""
    try:
        root = ElementTree.parse(path).getroot()
    except OSError as exc:
        raise ValueError(f"cannot read Syncthing's {path}: {exc.strerror or exc}") from None
    except ElementTree.ParseError as exc:
        raise ValueError(f"{path} is not Syncthing's config.xml: {exc}") from None
    key = (root.findtext("gui/apikey") or "").strip()
    if not key:
        raise ValueError(f"{path} has no <gui><apikey>")
    return key
