"""The TFTP wire format (RFC 1350, options RFC 2347): one class per packet, no I/O.

``decode(datagram)`` returns a packet object or raises a ``PacketError`` subclass; each
packet's ``to_wire()`` gives the bytes back. File names travel as bytes; they are decoded
as UTF-8 with ``surrogateescape``, so any name round-trips and maps back to the same bytes
on the file system. Option names are case-insensitive (stored lower case); values are text.
"""

import struct

RRQ_OP, WRQ_OP, DATA_OP, ACK_OP, ERROR_OP, OACK_OP = 1, 2, 3, 4, 5, 6

# Error codes: RFC 1350 section 5, 8 from RFC 2347.
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL_OP = 4
ERR_UNKNOWN_TID = 5
ERR_FILE_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTIONS = 8

MODES = ("netascii", "octet", "mail")
MAX_BLOCK = 0xFFFF
# An RRQ was limited to 512 bytes by RFC 1350, but option-laden requests of PXE ROMs
# grow past it; anything longer than this is not a TFTP request.
MAX_REQUEST_BYTES = 2048
MAX_ERROR_MESSAGE_BYTES = 512
ENCODING = "utf-8"
_NAME_ERRORS = "surrogateescape"

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class PacketError(ValueError):
    """A datagram that is not a valid TFTP packet; ``code`` is the TFTP error to answer."""

    code = ERR_ILLEGAL_OP


class TruncatedPacket(PacketError):
    """Shorter than its opcode requires."""


class UnknownOpcode(PacketError):
    """An opcode outside 1-6."""


class MalformedRequest(PacketError):
    """An RRQ/WRQ that does not split into name, mode and option pairs."""


class UnknownMode(PacketError):
    """A transfer mode other than netascii, octet or mail."""


class _Packet:
    __slots__ = ()

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __hash__(self):
        return hash((type(self),) + tuple(repr(getattr(self, s)) for s in self.__slots__))

    def __repr__(self):
        fields = ", ".join("%s=%r" % (s, getattr(self, s)) for s in self.__slots__)
        return "%s(%s)" % (type(self).__name__, fields)


def _split_strings(body: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings; the last one must be terminated too."""
    if not body.endswith(b"\0"):
        raise MalformedRequest("%s: last field is not NUL-terminated" % what)
    return body[:-1].split(b"\0")


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRequest("%s is not ASCII" % what) from None


def _encode_options(options: dict) -> bytes:
    return b"".join(name.encode("ascii") + b"\0" + str(value).encode("ascii") + b"\0"
                    for name, value in options.items())


def _decode_options(fields: list[bytes], what: str) -> dict[str, str]:
    if len(fields) % 2:
        raise MalformedRequest("%s: option %r has no value" % (what, fields[-1][:40]))
    options: dict[str, str] = {}
    for i in range(0, len(fields), 2):
        name = _ascii(fields[i], "option name").lower()
        if not name:
            raise MalformedRequest("%s: empty option name" % what)
        # RFC 2347 does not say which of two equal names counts; the first one does.
        options.setdefault(name, _ascii(fields[i + 1], "option value"))
    return options


class _Request(_Packet):
    __slots__ = ("filename", "mode", "options")
    opcode = 0

    def __init__(self, filename: str, mode: str = "octet", options: dict | None = None):
        self.filename = filename
        self.mode = mode
        self.options = dict(options or {})

    @classmethod
    def from_wire(cls, datagram: bytes):
        if len(datagram) > MAX_REQUEST_BYTES:
            raise MalformedRequest("request of %d bytes (at most %d)"
                                   % (len(datagram), MAX_REQUEST_BYTES))
        fields = _split_strings(datagram[2:], "request")
        if len(fields) < 2:
            raise MalformedRequest("request without a mode")
        raw_name, raw_mode, *rest = fields
        if not raw_name:
            raise MalformedRequest("empty file name")
        mode = _ascii(raw_mode, "mode").lower()
        if mode not in MODES:
            raise UnknownMode("unknown transfer mode %r" % raw_mode[:20].decode("latin-1"))
        name = raw_name.decode(ENCODING, _NAME_ERRORS)
        return cls(name, mode, _decode_options(rest, "request"))

    def to_wire(self) -> bytes:
        return (_OPCODE.pack(self.opcode) + self.filename.encode(ENCODING, _NAME_ERRORS)
                + b"\0" + self.mode.encode("ascii") + b"\0" + _encode_options(self.options))


class RRQ(_Request):
    """Read request: file name, mode, and the options the client asks for."""

    __slots__ = ()
    opcode = RRQ_OP


class WRQ(_Request):
    """Write request (refused by this read-only server, but decoded to say so)."""

    __slots__ = ()
    opcode = WRQ_OP


class DATA(_Packet):
    """One block of file data; a block shorter than the block size ends the transfer."""

    __slots__ = ("block", "data")
    opcode = DATA_OP

    def __init__(self, block: int, data: bytes):
        self.block = block
        self.data = data

    @classmethod
    def from_wire(cls, datagram: bytes):
        if len(datagram) < 4:
            raise TruncatedPacket("DATA of %d bytes" % len(datagram))
        return cls(_HEADER.unpack_from(datagram)[1], bytes(datagram[4:]))

    def to_wire(self) -> bytes:
        return encode_data(self.block, self.data)


class ACK(_Packet):
    """Acknowledges a DATA block (block 0 acknowledges an OACK)."""

    __slots__ = ("block",)
    opcode = ACK_OP

    def __init__(self, block: int):
        self.block = block

    @classmethod
    def from_wire(cls, datagram: bytes):
        # Some clients pad; RFC 1350 ACKs are exactly 4 bytes, the rest is ignored.
        if len(datagram) < 4:
            raise TruncatedPacket("ACK of %d bytes" % len(datagram))
        return cls(_HEADER.unpack_from(datagram)[1])

    def to_wire(self) -> bytes:
        return _HEADER.pack(ACK_OP, self.block)


class ERROR(_Packet):
    """An error code and a human-readable message; it ends the transfer."""

    __slots__ = ("code", "message")
    opcode = ERROR_OP

    def __init__(self, code: int, message: str = ""):
        self.code = code
        self.message = message

    @classmethod
    def from_wire(cls, datagram: bytes):
        if len(datagram) < 4:
            raise TruncatedPacket("ERROR of %d bytes" % len(datagram))
        # Many clients forget the final NUL: take what is there.
        raw = bytes(datagram[4:4 + MAX_ERROR_MESSAGE_BYTES]).split(b"\0", 1)[0]
        return cls(_HEADER.unpack_from(datagram)[1], raw.decode(ENCODING, "replace"))

    def to_wire(self) -> bytes:
        message = self.message.encode(ENCODING, "replace")[:MAX_ERROR_MESSAGE_BYTES]
        return _HEADER.pack(ERROR_OP, self.code) + message + b"\0"


class OACK(_Packet):
    """Option acknowledgement: the options the server accepted, with their final values."""

    __slots__ = ("options",)
    opcode = OACK_OP

    def __init__(self, options: dict):
        self.options = dict(options)

    @classmethod
    def from_wire(cls, datagram: bytes):
        body = datagram[2:]
        fields = _split_strings(body, "OACK") if body else []
        return cls(_decode_options(fields, "OACK"))

    def to_wire(self) -> bytes:
        return _OPCODE.pack(OACK_OP) + _encode_options(self.options)


_CLASSES = {cls.opcode: cls for cls in (RRQ, WRQ, DATA, ACK, ERROR, OACK)}


def decode(datagram: bytes):
    """The packet a datagram holds; raises a ``PacketError`` subclass when it holds none."""
    if len(datagram) < 2:
        raise TruncatedPacket("datagram of %d bytes" % len(datagram))
    opcode = (datagram[0] << 8) | datagram[1]
    cls = _CLASSES.get(opcode)
    if cls is None:
        raise UnknownOpcode("unknown opcode %d" % opcode)
    return cls.from_wire(datagram)


def encode_data(block: int, data: bytes, _pack=_HEADER.pack) -> bytes:
    """A DATA datagram; ``block`` is taken modulo 65536 (rollover). The hot path of a read."""
    return _pack(DATA_OP, block & MAX_BLOCK) + data


def encode_error(code: int, message: str) -> bytes:
    """An ERROR datagram."""
    return ERROR(code, message).to_wire()
