"""The signed JSON envelope carried in the body of XMPP chat messages (PROTOCOL.md, "Envelope").

Pure codec: no reactor, no global clock. ``decode`` parses and validates, ``verify`` checks
the Ed25519 signature bound to the sender and recipient bare JIDs, ``ReplayGuard`` refuses
stale and repeated envelopes; ``open_envelope`` does all three in the only safe order.
"""

import base64
import binascii
import collections
import json
import math
import os
import re
import zlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

VERSION = 1
MAX_ENVELOPE_BYTES = 256 * 1024
COMPRESS_ABOVE_BYTES = 16 * 1024
MAX_INFLATED_BYTES = 4 * 1024 * 1024
MAX_SKEW_SECONDS = 300
NONCE_BYTES = 16
SIGNATURE_BYTES = 64
MAX_ACTION_CHARS = 64
# ts travels as JSON; peers written in JavaScript read it as a double.
MAX_TS_MS = 2**53

ERROR_CODES = {
    "oversize": 413, "bad-json": 400, "bad-field": 400, "unknown-field": 400,
    "bad-signature": 401, "stale": 408, "replay": 409, "replay-cache-full": 503,
    "unknown-action": 404,
}

_ACTION_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
_SESSIONID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SCALAR_KEYS = ("v", "action", "sessionid", "ret", "ts", "nonce")
_KNOWN_KEYS = frozenset(_SCALAR_KEYS + ("data", "data_z", "sig"))
_SHOW_LIMIT = 200


class EnvelopeError(Exception):
    """An envelope refused; ``reason`` is a short token, ``code`` the reply's ``ret``."""

    def __init__(self, reason: str, message: str = "", code: int | None = None):
        if code is None:
            code = ERROR_CODES[reason]
        # Logged as one line: a newline in a message must not forge a second log entry.
        message = " ".join(str(message).splitlines())
        super().__init__(reason, message, code)
        self.reason, self.message, self.code = reason, message, code

    def __str__(self):
        return f"{self.reason}: {self.message}" if self.message else self.reason


def _show(value) -> str:
    """Attacker input for an error message: repr'd, at most ~200 characters of it."""
    if isinstance(value, (str, bytes)):
        cut = value[:_SHOW_LIMIT]
        return repr(cut) + ("..." if len(value) > _SHOW_LIMIT else "")
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"  # repr() of a huge int can fail
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    # Containers can be huge; their type says enough.
    return type(value).__name__


def _bad(field: str, expected: str, value) -> EnvelopeError:
    return EnvelopeError("bad-field", f"{field}: expected {expected}, got {_show(value)}")


def canonical_json(obj) -> bytes:
    """Sorted keys, no spaces, UTF-8; raises ValueError on NaN/Infinity or lone surrogates."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def bare(jid: str) -> str:
    """The bare JID a signature is bound to: resource dropped, lower-cased."""
    return jid.split("/", 1)[0].lower()


def _b64(field: str, value, size: int | None = None) -> bytes:
    """Decode canonical standard base64 (of exactly ``size`` bytes if given), else bad-field."""
    expected = f"base64 of {size} bytes" if size else "base64"
    if not isinstance(value, str) or not value.isascii():
        raise _bad(field, expected, value)
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _bad(field, expected, value) from None
    # Only the canonical spelling, so one byte string has exactly one wire form.
    if base64.b64encode(raw).decode("ascii") != value or size not in (None, len(raw)):
        raise _bad(field, expected, value)
    return raw


def _check_scalars(v, action, sessionid, ret, ts, nonce) -> None:
    # type() rather than isinstance(): JSON true must not pass for the integer 1.
    if type(v) is not int or v != VERSION:
        raise _bad("v", f"the integer {VERSION}", v)
    if not isinstance(action, str) or len(action) > MAX_ACTION_CHARS \
            or not _ACTION_RE.fullmatch(action):
        raise _bad("action", "dotted lower-case name of at most 64 characters", action)
    if not isinstance(sessionid, str) or not _SESSIONID_RE.fullmatch(sessionid):
        raise _bad("sessionid", "1-128 characters of [A-Za-z0-9._:-]", sessionid)
    if type(ret) is not int or not -(2**31) <= ret < 2**31:
        raise _bad("ret", "32-bit signed integer", ret)
    if type(ts) is not int or not 0 <= ts < MAX_TS_MS:
        raise _bad("ts", "integer milliseconds since the epoch", ts)
    _b64("nonce", nonce, NONCE_BYTES)


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """One validated message; build with ``Envelope.new`` or ``reply``."""

    action: str
    sessionid: str
    data: dict
    ret: int = 0
    ts: int
    nonce: str
    v: int = VERSION

    def __post_init__(self):
        _check_scalars(self.v, self.action, self.sessionid, self.ret, self.ts, self.nonce)
        if not isinstance(self.data, dict):
            raise _bad("data", "JSON object", self.data)

    @classmethod
    def new(cls, action: str, data: dict, *, sessionid: str | None = None, ret: int = 0,
            now: float, rand=os.urandom) -> "Envelope":
        """A fresh envelope stamped at ``now`` (seconds) with a nonce from ``rand(n)``."""
        if sessionid is None:
            sessionid = f"{action.split('.', 1)[0]}-{rand(8).hex()}"
        return cls(action=action, sessionid=sessionid, data=data, ret=ret,
                   ts=int(now * 1000), nonce=base64.b64encode(rand(NONCE_BYTES)).decode("ascii"))

    def reply(self, data: dict, ret: int = 0, *, now: float, rand=os.urandom) -> "Envelope":
        """The ``result.<action>`` answer in the same session."""
        if self.is_result:
            raise ValueError(f"{self.action} is already a result; results are not answered")
        return Envelope.new(f"result.{self.action}", data, sessionid=self.sessionid, ret=ret,
                            now=now, rand=rand)

    @property
    def is_result(self) -> bool:
        return self.action.startswith("result.")


@dataclass(frozen=True)
class SignedEnvelope:
    """``decode``'s output: the envelope, the wire fields under the signature, the signature."""

    envelope: Envelope
    signed_fields: dict
    signature: bytes


def _signing_input(fields: dict, sender: str, recipient: str) -> bytes:
    # Binding both bare JIDs stops a captured envelope being re-sent by, or to, someone else.
    return canonical_json({**fields, "from": bare(sender), "to": bare(recipient)})


def _canonical_data(data) -> bytes:
    try:
        return canonical_json(data)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError("bad-field", f"data: not canonical JSON ({_show(str(exc))})") from None


def encode(env: Envelope, private_key, sender: str, recipient: str) -> str:
    """The signed JSON body of ``env`` from ``sender`` to ``recipient``."""
    data_bytes = _canonical_data(env.data)
    if len(data_bytes) > MAX_INFLATED_BYTES:
        raise EnvelopeError("oversize", f"data is {len(data_bytes)} bytes, limit "
                                        f"{MAX_INFLATED_BYTES}")
    body = {key: getattr(env, key) for key in _SCALAR_KEYS}
    if len(data_bytes) > COMPRESS_ABOVE_BYTES:
        body["data_z"] = base64.b64encode(zlib.compress(data_bytes)).decode("ascii")
    else:
        body["data"] = env.data
    body["sig"] = base64.b64encode(
        private_key.sign(_signing_input(body, sender, recipient))).decode("ascii")
    text = canonical_json(body)
    if len(text) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("oversize", f"body is {len(text)} bytes, limit {MAX_ENVELOPE_BYTES}")
    return text.decode("utf-8")


def _no_duplicates(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise EnvelopeError("bad-json", f"duplicate key {_show(dup)}")
    return obj


def _no_constant(name):
    raise EnvelopeError("bad-json", f"{name} is not JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise EnvelopeError("bad-json", f"number out of range: {_show(text)}")
    return value


def _parse_json(text: str, what: str):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        # ValueError covers syntax errors and ints past Python's digit limit.
        raise EnvelopeError("bad-json", f"{what}: {_show(str(exc))}") from None


def _inflate(data_z) -> dict:
    raw = _b64("data_z", data_z)
    inflater = zlib.decompressobj()
    try:
        # Bounded: a few KiB must not expand into gigabytes (zip bomb).
        out = inflater.decompress(raw, MAX_INFLATED_BYTES + 1)
    except zlib.error:
        raise _bad("data_z", "zlib data", data_z) from None
    if len(out) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
        raise EnvelopeError("oversize", f"data_z inflates beyond {MAX_INFLATED_BYTES} bytes")
    if not inflater.eof or inflater.unused_data:
        raise _bad("data_z", "one complete zlib stream", data_z)
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("data_z", "UTF-8 JSON once inflated", data_z) from None
    return _parse_json(text, "data_z")


def decode(body: str | bytes) -> SignedEnvelope:
    """Parse and validate a body; does NOT check the signature (see ``verify``)."""
    # Size first, before any parsing: a UTF-8 character is at least one byte, so a str
    # longer than the limit is refused without encoding it.
    if len(body) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("oversize", f"body exceeds {MAX_ENVELOPE_BYTES} bytes")
    try:
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        text = raw.decode("utf-8")
    except UnicodeError:
        raise EnvelopeError("bad-json", "body is not UTF-8 text") from None
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("oversize", f"body is {len(raw)} bytes, limit {MAX_ENVELOPE_BYTES}")
    obj = _parse_json(text, "body")
    if not isinstance(obj, dict):
        raise EnvelopeError("bad-json", f"body: expected a JSON object, got {_show(obj)}")
    unknown = sorted(set(obj) - _KNOWN_KEYS)
    if unknown:
        raise EnvelopeError("unknown-field", f"unknown key {_show(unknown[0])}")
    for key in _SCALAR_KEYS + ("sig",):
        if key not in obj:
            raise EnvelopeError("bad-field", f"{key}: missing")
    if ("data" in obj) == ("data_z" in obj):
        raise EnvelopeError("bad-field", "data: expected exactly one of data and data_z")
    signature = _b64("sig", obj["sig"], SIGNATURE_BYTES)
    if "data" in obj:
        data = obj["data"]  # its type is checked by Envelope below
    else:
        data = _inflate(obj["data_z"])
        if not isinstance(data, dict):
            raise _bad("data_z", "a JSON object once inflated", data)
    # JSON "\ud800" escapes parse into strings that cannot be re-encoded; refuse them here
    # rather than in whichever handler first logs or stores them.
    _canonical_data(data)
    envelope = Envelope(data=data, **{key: obj[key] for key in _SCALAR_KEYS})
    signed_fields = {key: value for key, value in obj.items() if key != "sig"}
    return SignedEnvelope(envelope, signed_fields, signature)


def verify(signed: SignedEnvelope, public_key, sender: str, recipient: str) -> None:
    """Raise EnvelopeError("bad-signature") unless ``public_key`` signed it, sender to recipient."""
    try:
        public_key.verify(signed.signature,
                          _signing_input(signed.signed_fields, sender, recipient))
    except InvalidSignature:
        raise EnvelopeError("bad-signature", f"not signed by the key of {_show(bare(sender))} "
                                             f"for {_show(bare(recipient))}") from None


class ReplayGuard:
    """Refuses envelopes outside the clock window and (sender, nonce) pairs seen in it.

    Call ``check`` only after ``verify`` succeeded: otherwise anyone could fill the cache
    with forged nonces, or burn a genuine sender's nonce before its envelope arrives.
    ``clock`` is anything with ``seconds()`` (the reactor, or ``task.Clock`` in tests).
    """

    def __init__(self, clock, window: float = MAX_SKEW_SECONDS, max_entries: int = 1_000_000):
        self._clock = clock
        self._window = window
        self._max_entries = max_entries
        self._seen = set()
        # (expiry, key) in insertion order. Expiries are not sorted (ts may differ from
        # arrival by +-window), so one entry can hold back pruning, by at most 2 x window.
        self._queue = collections.deque()

    def __len__(self):
        return len(self._seen)

    def _prune(self, now: float) -> None:
        queue, seen = self._queue, self._seen
        while queue and queue[0][0] < now:
            seen.discard(queue.popleft()[1])

    def check(self, envelope: Envelope, sender: str) -> None:
        """Remember ``envelope``'s nonce, or raise stale / replay / replay-cache-full."""
        now = self._clock.seconds()
        self._prune(now)
        ts = envelope.ts / 1000
        if abs(ts - now) > self._window:
            raise EnvelopeError("stale", f"ts is {ts - now:+.0f} s from this clock, "
                                         f"window {self._window} s")
        key = (bare(sender), envelope.nonce)
        if key in self._seen:
            raise EnvelopeError("replay", f"nonce {envelope.nonce} from {_show(key[0])} "
                                          "already seen")
        if len(self._seen) >= self._max_entries:
            # Refusing is safer than forgetting: a forgotten nonce is a replay accepted.
            raise EnvelopeError("replay-cache-full", f"{len(self._seen)} nonces in the window")
        self._seen.add(key)
        # A replay after ts + window is stale anyway, so the entry is no longer needed.
        self._queue.append((ts + self._window, key))


def open_envelope(body: str | bytes, public_key, sender: str, recipient: str,
                  replay_guard: ReplayGuard) -> Envelope:
    """Decode, verify, then replay-check: the envelope a handler may act on."""
    signed = decode(body)
    verify(signed, public_key, sender, recipient)
    replay_guard.check(signed.envelope, sender)
    return signed.envelope
