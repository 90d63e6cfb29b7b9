"""proxyDHCP decisions: which PXE client gets which boot file, and who gets nothing.

A proxyDHCP server hands out no address. The site's DHCP server does that; we only add,
for the machines the admin allowed, the two things PXE needs: a next-server (``siaddr``,
our address) and a boot file. That is how Medulla's PXE coexists with an existing one
(the FAQ's "I already have a PXE server"): the existing DHCP server stays the sole source
of addresses, and we answer only MACs in ``allowed_macs``; everyone else never hears from
us. The boot file follows the client: a PXE ROM gets an iPXE binary for its architecture
(option 93), and iPXE itself (user class "iPXE", or its option 175) gets the
``autoexec.ipxe`` script, so a machine that already runs iPXE never loads iPXE again.

Everything here is plain logic over ``packets``: ``ProxyDHCP.handle(datagram, source,
port)`` returns the answer to send, or None after at most one log line (rate-limited).
"""

import ipaddress
from dataclasses import dataclass

from twisted.logger import Logger

from ...core.config import ConfigError
from ..tftp.limits import LineBudget
from . import packets
from .packets import DHCPPacket, PacketError

SERVER_PORT = 67         # DHCPDISCOVER arrives here (broadcast)
CLIENT_PORT = 68
BOOT_SERVER_PORT = 4011  # PXE clients send their ProxyDHCP/boot server DHCPREQUEST here
BROADCAST = "255.255.255.255"

# RFC 4578 client architectures -> the [proxydhcp] key naming its boot file.
ARCHITECTURES = {0: "bios", 6: "efi32", 7: "efi64", 9: "efi64", 11: "arm64"}
# PXE discovery control, bit 3: boot the file of this offer, no boot server discovery.
DISCOVERY_USE_BOOTFILE = 0x08

IGNORED_LOG_INTERVAL = 60.0   # one line per (reason, client) per minute
LINES_PER_SECOND = 20         # and never more than this many lines a second in all
MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class ProxySettings:
    """``[proxydhcp]`` as the logic needs it; ``server`` is None until the service knows it."""

    interface: str
    server: ipaddress.IPv4Address | None
    allowed_macs: frozenset
    bootfiles: dict          # "bios"/"efi32"/"efi64"/"arm64" -> file name ("" = none)
    ipxe_bootfile: str

    def with_server(self, server: ipaddress.IPv4Address) -> "ProxySettings":
        return ProxySettings(self.interface, server, self.allowed_macs, self.bootfiles,
                             self.ipxe_bootfile)


def settings_from_config(cfg) -> ProxySettings:
    """The checked ``[proxydhcp]`` settings; raises ``ConfigError`` naming the key."""
    section = cfg["proxydhcp"]

    def fail(key, message, where=None):
        file, line = cfg.origin("proxydhcp", where or key)
        raise ConfigError(file, line, "proxydhcp", key, message)

    interface = section["interface"]
    if section["enabled"] and not interface:  # located at 'enabled': interface is unset
        fail("interface", "enabled, but no network interface to answer on (like eth0)",
             "enabled")
    if len(interface.encode()) > 15 or "/" in interface or " " in interface:
        fail("interface", "%r is not a network interface name" % interface)
    server = None
    if section["server_address"]:
        try:
            server = ipaddress.IPv4Address(section["server_address"])
        except ValueError:
            fail("server_address", "%r is not an IPv4 address" % section["server_address"])
    names = {"bios": "bootfile_bios", "efi32": "bootfile_efi32", "efi64": "bootfile_efi64",
             "arm64": "bootfile_arm64", "ipxe": "ipxe_bootfile"}
    for key in names.values():
        raw = section[key].encode("utf-8")
        if len(raw) > 127 or b"\0" in raw:
            fail(key, "a boot file name is at most 127 bytes, without NUL")
    bootfiles = {arch: section[key] for arch, key in names.items() if arch != "ipxe"}
    return ProxySettings(interface, server, frozenset(section["allowed_macs"]), bootfiles,
                         section["ipxe_bootfile"])


@dataclass(frozen=True)
class Answer:
    """A reply to send: its bytes, where to, and what it says (for the log)."""

    data: bytes
    destination: tuple
    what: str
    mac: str
    client: str
    bootfile: str


class Ignored(Exception):
    """A request we leave unanswered: ``reason`` is a short code, ``level`` the log level."""

    def __init__(self, reason: str, detail: str, level: str = "debug"):
        super().__init__(detail)
        self.reason, self.detail, self.level = reason, detail, level


def is_ipxe(request: DHCPPacket) -> bool:
    """True for iPXE itself (its user class, or its own option 175)."""
    if packets.OPT_IPXE_ENCAP in request.options:
        return True
    raw = request.options.get(packets.OPT_USER_CLASS, b"")
    return b"iPXE" in packets.user_classes(raw)


def architecture(request: DHCPPacket) -> int:
    """The client's first RFC 4578 architecture; 0 (BIOS) when it sends none, as PXE says."""
    raw = request.options.get(packets.OPT_CLIENT_ARCH)
    if raw is None:
        return 0
    if not raw or len(raw) % 2:
        raise Ignored("malformed", "option 93 of %d bytes" % len(raw), "warn")
    return int.from_bytes(raw[:2], "big")


def choose_bootfile(request: DHCPPacket, settings: ProxySettings) -> tuple[str, str]:
    """(boot file, client kind) for an allowed PXE client; raises ``Ignored`` if none."""
    if is_ipxe(request):
        if not settings.ipxe_bootfile:
            raise Ignored("no-bootfile", "ipxe_bootfile is empty", "warn")
        return settings.ipxe_bootfile, "iPXE"
    arch = architecture(request)
    kind = ARCHITECTURES.get(arch)
    bootfile = settings.bootfiles.get(kind, "") if kind else ""
    if not bootfile:
        raise Ignored("no-bootfile", "no boot file for client architecture %d%s"
                      % (arch, " (%s)" % kind if kind else ""), "warn")
    return bootfile, kind


def _vendor_options(request: DHCPPacket, port: int) -> bytes:
    """Option 43 for a PXE client: boot our file directly; echo a boot item it asked for."""
    sub = {packets.PXE_DISCOVERY_CONTROL: bytes((DISCOVERY_USE_BOOTFILE,))}
    if port == BOOT_SERVER_PORT and packets.OPT_VENDOR_SPECIFIC in request.options:
        try:
            asked = packets.decode_suboptions(request.options[packets.OPT_VENDOR_SPECIFIC])
        except PacketError as exc:
            raise Ignored("malformed", "option 43: %s" % exc, "warn") from None
        if packets.PXE_BOOT_ITEM in asked:
            sub[packets.PXE_BOOT_ITEM] = asked[packets.PXE_BOOT_ITEM]
    return packets.encode_options(sub) + bytes((packets.OPT_END,))


def decide(request: DHCPPacket, source: tuple, port: int,
           settings: ProxySettings) -> tuple[DHCPPacket, tuple, str, str]:
    """(reply, destination, boot file, client kind) for ``request``, or raises ``Ignored``.

    Port 67 answers DHCPDISCOVER with a DHCPOFFER without an address; port 4011 answers
    the PXE client's DHCPREQUEST (or DHCPINFORM) with a DHCPACK, to where it came from.
    """
    if request.op != packets.BOOTREQUEST:
        raise Ignored("not-a-request", "a BOOTREPLY (another DHCP server's answer)")
    kind = request.message_type
    wanted = {SERVER_PORT: (packets.DISCOVER,),
              BOOT_SERVER_PORT: (packets.REQUEST, packets.INFORM)}[port]
    if kind not in wanted:
        raise Ignored("not-for-us", "%s on port %d"
                      % (packets.MESSAGE_NAMES.get(kind, "BOOTP/unknown message"), port))
    vendor_class = request.options.get(packets.OPT_VENDOR_CLASS, b"")
    if not vendor_class.startswith(b"PXEClient"):
        raise Ignored("not-pxe", "vendor class %r is not PXEClient" % vendor_class[:32])
    mac = request.mac
    if mac is None:
        raise Ignored("not-ethernet", "hardware type %d, length %d"
                      % (request.htype, request.hlen))
    if mac not in settings.allowed_macs:
        raise Ignored("not-allowed", "MAC %s is not in allowed_macs" % mac, "info")
    bootfile, client_kind = choose_bootfile(request, settings)
    options = {packets.OPT_MESSAGE_TYPE: bytes((packets.OFFER if port == SERVER_PORT
                                                else packets.ACK,)),
               packets.OPT_SERVER_ID: settings.server.packed,
               packets.OPT_VENDOR_CLASS: b"PXEClient",
               packets.OPT_VENDOR_SPECIFIC: _vendor_options(request, port),
               packets.OPT_BOOTFILE: bootfile.encode("utf-8")}
    if packets.OPT_CLIENT_UUID in request.options:   # PXE 2.1: echo the client's UUID
        options[packets.OPT_CLIENT_UUID] = request.options[packets.OPT_CLIENT_UUID]
    reply = DHCPPacket(op=packets.BOOTREPLY, htype=request.htype, hlen=request.hlen,
                       xid=request.xid, flags=request.flags, ciaddr=request.ciaddr,
                       siaddr=settings.server, giaddr=request.giaddr,
                       chaddr=request.chaddr, file=bootfile.encode("utf-8"), options=options)
    return reply, destination(request, source, port), bootfile, client_kind


def destination(request: DHCPPacket, source: tuple, port: int) -> tuple:
    """Where a reply goes: back to a 4011 sender; via the relay; else broadcast (no address
    is ours to unicast to: the client has none yet)."""
    if port == BOOT_SERVER_PORT:
        return source[0], source[1]
    if int(request.giaddr):
        return str(request.giaddr), SERVER_PORT
    return BROADCAST, CLIENT_PORT


class QuietLog:
    """One line per (reason, client) per interval, and at most ``per_second`` in all.

    A network carries DHCP from every machine; a hostile one can send junk as fast as it
    likes. Neither may flood the journal (medulla-guard reads it).
    """

    def __init__(self, log, clock, interval=IGNORED_LOG_INTERVAL, per_second=LINES_PER_SECOND):
        self.log, self.clock, self.interval = log, clock, interval
        self.budget = LineBudget(clock, per_second)
        self._last = {}
        self._suppressed = {}

    def emit(self, level: str, key, fmt: str, **fields) -> bool:
        """Log ``fmt`` unless ``key`` logged within the interval; True if it was logged."""
        now = self.clock.seconds()
        if key is not None:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
        allowed, over_budget = self.budget.take()
        if not allowed:
            return False
        if key is not None:
            if len(self._last) >= MAX_REMEMBERED:
                self._last.clear()
                self._suppressed.clear()
            self._last[key] = now
        more = self._suppressed.pop(key, 0) if key is not None else 0
        getattr(self.log, level)(fmt + "{more}{budget}", more=" (+%d similar since)" % more
                                 if more else "",
                                 budget=" (%d lines over %d/s not logged)"
                                 % (over_budget, self.budget.per_second) if over_budget
                                 else "", **fields)
        return True


class ProxyDHCP:
    """Turns datagrams into answers or silence; counts both."""

    log = Logger()

    def __init__(self, settings: ProxySettings, clock):
        if settings.server is None:
            raise ValueError("the proxyDHCP logic needs our server address")
        self.settings = settings
        self.quiet = QuietLog(self.log, clock)
        self.answered = 0
        self.ignored = 0

    def handle(self, data: bytes, source: tuple, port: int) -> Answer | None:
        """The answer to the datagram ``data`` from ``source`` on our ``port``, or None."""
        client = source[0]
        try:
            request = packets.decode(data)
            reply, where, bootfile, kind = decide(request, source, port, self.settings)
        except PacketError as exc:
            self.ignored += 1
            self.quiet.emit("warn", ("malformed", client),
                            "proxyDHCP ignored a malformed packet from {client} port {port}: "
                            "{error}", client=client, port=source[1], error=str(exc))
            return None
        except Ignored as exc:
            self.ignored += 1
            mac = request.mac or client
            self.quiet.emit(exc.level, (exc.reason, mac),
                            "proxyDHCP ignored {what} from {mac} on port {port}: {reason}: "
                            "{detail}", what=packets.MESSAGE_NAMES.get(request.message_type,
                                                                       "BOOTP"),
                            mac=mac, port=port, reason=exc.reason, detail=exc.detail)
            return None
        what = packets.MESSAGE_NAMES[reply.message_type]
        self.answered += 1
        self.quiet.emit("info", None, "proxyDHCP {what} to {mac} ({kind}, from {client}): "
                        "next-server {server} file {file}", what=what, mac=request.mac,
                        kind=kind, client=client, server=self.settings.server, file=bootfile)
        return Answer(packets.encode(reply), where, what, request.mac, client, bootfile)
