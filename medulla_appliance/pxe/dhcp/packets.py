"""The DHCP/BOOTP wire format (RFC 2131/2132, option overload, RFC 3396 long options).

No I/O here: ``decode(datagram)`` gives a ``DHCPPacket`` or raises ``PacketError``, and
``encode(packet)`` gives the bytes back. The parser trusts nothing it reads: every length
is checked against what is left, the magic cookie must be there, option 52 (overload) may
send the parser into the ``file`` and ``sname`` fields once but never further, and an
option that repeats is joined to its first occurrence as RFC 3396 says. Anything else is a
``PacketError`` naming what was wrong, never another exception.
"""

import ipaddress
import struct
from dataclasses import dataclass, field

BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHERNET = 1
MAGIC_COOKIE = b"\x63\x82\x53\x63"
FLAG_BROADCAST = 0x8000

# Message types (option 53).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {DISCOVER: "DHCPDISCOVER", OFFER: "DHCPOFFER", REQUEST: "DHCPREQUEST",
                 DECLINE: "DHCPDECLINE", ACK: "DHCPACK", NAK: "DHCPNAK",
                 RELEASE: "DHCPRELEASE", INFORM: "DHCPINFORM"}

# Options this package reads or writes.
OPT_PAD = 0
OPT_VENDOR_SPECIFIC = 43      # PXE puts its sub-options here (PXE 2.1 spec)
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_VENDOR_CLASS = 60         # "PXEClient:Arch:00000:UNDI:002001" from PXE firmware
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77           # iPXE sends "iPXE"
OPT_CLIENT_ARCH = 93          # RFC 4578: 0 BIOS, 6 EFI IA32, 7/9 EFI x86-64, 11 ARM64
OPT_CLIENT_UUID = 97          # RFC 4578: type 0 + 16 bytes
OPT_IPXE_ENCAP = 175          # iPXE's own encapsulated options
OPT_END = 255

# Sub-options of option 43 for PXE clients.
PXE_DISCOVERY_CONTROL = 6
PXE_BOOT_ITEM = 71

HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_BYTES = HEADER.size                      # 236
OPTIONS_START = HEADER_BYTES + len(MAGIC_COOKIE)  # 240
# What a BOOTP relay or an old ROM expects at least (RFC 951: 300 bytes).
MIN_PACKET_BYTES = 300
# Far beyond any real DHCP message (they fit one Ethernet frame); longer is not DHCP.
MAX_PACKET_BYTES = 4096
_SNAME_BYTES, _FILE_BYTES = 64, 128


class PacketError(ValueError):
    """A datagram that is not a well-formed DHCP message; the text says what is wrong."""


@dataclass
class DHCPPacket:
    """One DHCP message; addresses are ``IPv4Address``, options ``{code: bytes}`` in order."""

    op: int = BOOTREQUEST
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    yiaddr: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    siaddr: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    giaddr: ipaddress.IPv4Address = ipaddress.IPv4Address(0)
    chaddr: bytes = bytes(16)
    sname: bytes = b""
    file: bytes = b""
    options: dict = field(default_factory=dict)

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    @property
    def mac(self) -> str | None:
        """The client's Ethernet address as ``aa:bb:cc:dd:ee:ff``; None for other links."""
        if self.htype != HTYPE_ETHERNET or self.hlen != 6:
            return None
        return ":".join("%02x" % b for b in self.chaddr[:6])


def _cstring(raw: bytes) -> bytes:
    """A fixed-size, NUL-padded header field (sname, file) without its padding."""
    return raw.split(b"\0", 1)[0]


def parse_options(raw: bytes, options: dict, where: str) -> bool:
    """Add the options of ``raw`` to ``options`` (joining repeats); True if END was seen.

    Raises ``PacketError`` for an option whose length runs past the end of ``raw``.
    """
    at, end = 0, len(raw)
    while at < end:
        code = raw[at]
        if code == OPT_PAD:
            at += 1
            continue
        if code == OPT_END:
            return True
        if at + 1 >= end:
            raise PacketError("option %d in the %s has no length byte" % (code, where))
        length = raw[at + 1]
        if at + 2 + length > end:
            raise PacketError("option %d in the %s claims %d bytes, %d are left"
                              % (code, where, length, end - at - 2))
        value = raw[at + 2:at + 2 + length]
        options[code] = options[code] + value if code in options else value
        at += 2 + length
    return False


def decode(data: bytes) -> DHCPPacket:
    """The ``DHCPPacket`` in ``data``; raises ``PacketError`` for anything malformed."""
    if len(data) > MAX_PACKET_BYTES:
        raise PacketError("%d bytes is longer than any DHCP message" % len(data))
    if len(data) < OPTIONS_START:
        raise PacketError("%d bytes is shorter than a DHCP header (%d)"
                          % (len(data), OPTIONS_START))
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     sname, file) = HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise PacketError("op %d is neither BOOTREQUEST nor BOOTREPLY" % op)
    if hlen > len(chaddr):
        raise PacketError("hardware address length %d is over 16" % hlen)
    if data[HEADER_BYTES:OPTIONS_START] != MAGIC_COOKIE:
        raise PacketError("no DHCP magic cookie")
    options = {}
    parse_options(data[OPTIONS_START:], options, "options field")
    overload = options.pop(OPT_OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise PacketError("option 52 (overload) must be one byte 1, 2 or 3, got %r"
                              % overload[:8])
        # RFC 2131 4.1: the options field first, then 'file', then 'sname'.
        for bit, raw, where in ((1, file, "file field"), (2, sname, "sname field")):
            if overload[0] & bit:
                parse_options(raw, options, where)
        if OPT_OVERLOAD in options:
            raise PacketError("option 52 (overload) inside an overloaded field")
        file = b"" if overload[0] & 1 else file
        sname = b"" if overload[0] & 2 else sname
    return DHCPPacket(op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs,
                      flags=flags, ciaddr=ipaddress.IPv4Address(ciaddr),
                      yiaddr=ipaddress.IPv4Address(yiaddr),
                      siaddr=ipaddress.IPv4Address(siaddr),
                      giaddr=ipaddress.IPv4Address(giaddr), chaddr=chaddr,
                      sname=_cstring(sname), file=_cstring(file), options=options)


def encode_options(options: dict) -> bytes:
    """Options as TLVs; a value over 255 bytes is split into several (RFC 3396)."""
    out = bytearray()
    for code, value in options.items():
        if code in (OPT_PAD, OPT_END):
            raise ValueError("option %d cannot carry a value" % code)
        chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    return bytes(out)


def encode(packet: DHCPPacket) -> bytes:
    """The wire form of ``packet`` (no overload: our replies are small), END-terminated."""
    if len(packet.sname) >= _SNAME_BYTES or len(packet.file) >= _FILE_BYTES:
        raise ValueError("sname is at most 63 bytes and file at most 127")
    header = HEADER.pack(packet.op, packet.htype, packet.hlen, packet.hops, packet.xid,
                         packet.secs, packet.flags, packet.ciaddr.packed,
                         packet.yiaddr.packed, packet.siaddr.packed, packet.giaddr.packed,
                         packet.chaddr.ljust(16, b"\0")[:16], packet.sname, packet.file)
    data = header + MAGIC_COOKIE + encode_options(packet.options) + bytes((OPT_END,))
    return data.ljust(MIN_PACKET_BYTES, b"\0")


def decode_suboptions(raw: bytes) -> dict:
    """Encapsulated options (43, 175) as ``{code: bytes}``; raises ``PacketError``."""
    options = {}
    parse_options(raw, options, "encapsulated options")
    return options


def user_classes(raw: bytes) -> list[bytes]:
    """The user classes of option 77, in RFC 3004's form or iPXE's bare one.

    RFC 3004 sends length-prefixed items; iPXE (and Windows) send the bare text. A value
    that does not split exactly into length-prefixed items is one bare class.
    """
    items, at = [], 0
    while at < len(raw):
        length = raw[at]
        if length == 0 or at + 1 + length > len(raw):
            return [raw]
        items.append(raw[at + 1:at + 1 + length])
        at += 1 + length
    return items if items else [raw]
