"""Per-deployment download tokens: the master signs, a relay checks (PROTOCOL.md, "Transfers").

A token is ``base64url(canonical JSON claims) "." base64url(Ed25519 signature)``, the
signature made over those exact claim bytes with the master's private key; base64url is
unpadded. Claims::

    {"pkg": package id, "dep": deployment session id, "sub": agent bare JID, "exp": epoch s}

Pure code: no reactor, no clock of its own (``now`` is passed in).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medulla_appliance.core.envelope import canonical_json
from medulla_appliance.core.keys import load_public_key

#: Longer tokens are refused before anything is decoded.
MAX_TOKEN_BYTES = 2 * 1024
#: A token still counts this long after its ``exp`` (clocks of master and relay differ).
CLOCK_SKEW_SECONDS = 60
SIGNATURE_BYTES = 64
PACKAGE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CLAIMS = ("dep", "exp", "pkg", "sub")
_B64URL_RE = re.compile(rb"[A-Za-z0-9_-]*")
_MAX_TEXT_CLAIM_CHARS = 512
# JavaScript peers read exp as a double.
_MAX_EXP = 2**53


class TokenError(Exception):
    """A token refused; ``reason`` is one of ``REASONS``."""

    REASONS = ("too-long", "malformed", "bad-signature", "bad-claims", "wrong-package",
               "expired")

    def __init__(self, reason: str, message: str = ""):
        if reason not in self.REASONS:
            raise ValueError(f"unknown token error reason {reason!r}")
        super().__init__(reason, message)
        self.reason, self.message = reason, message

    def __str__(self):
        return f"{self.reason}: {self.message}" if self.message else self.reason


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _unb64url(text: bytes) -> bytes:
    """Decode canonical unpadded base64url, or raise TokenError("malformed")."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError("malformed", "not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed", "not unpadded base64url") from None
    if _b64url(raw) != text:  # unused trailing bits: one token, one spelling
        raise TokenError("malformed", "not canonical base64url")
    return raw


def _claims_problem(claims) -> str | None:
    """What is wrong with ``claims`` (a decoded JSON value), or None."""
    if not isinstance(claims, dict):
        return "claims are not a JSON object"
    if sorted(claims) != list(CLAIMS):
        return f"claims must be exactly {', '.join(CLAIMS)}"
    if not isinstance(claims["pkg"], str) or not PACKAGE_ID_RE.fullmatch(claims["pkg"]):
        return "pkg is not a package id"
    for name in ("dep", "sub"):
        value = claims[name]
        if not isinstance(value, str) or not value or len(value) > _MAX_TEXT_CLAIM_CHARS:
            return f"{name} is not a non-empty string of at most {_MAX_TEXT_CLAIM_CHARS} chars"
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int) or not 0 < exp < _MAX_EXP:
        return "exp is not a positive integer (epoch seconds)"
    return None


def make_token(private_key: Ed25519PrivateKey, claims: dict, now: float) -> str:
    """Sign ``claims`` (pkg, dep, sub, exp) into a token; ValueError if they are invalid
    or already expired at ``now``."""
    problem = _claims_problem(claims)
    if problem is not None:
        raise ValueError(problem)
    if claims["exp"] <= now:
        raise ValueError(f"exp {claims['exp']} is not after now ({int(now)})")
    payload = canonical_json(claims)
    token = _b64url(payload) + b"." + _b64url(private_key.sign(payload))
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError(f"the token would be longer than {MAX_TOKEN_BYTES} bytes")
    return token.decode("ascii")


def check_token(token: str | bytes, public_key: Ed25519PublicKey | str, *, package_id: str,
                now: float) -> dict:
    """The claims of ``token`` if the master signed it for ``package_id`` and it has not
    expired at ``now`` (with ``CLOCK_SKEW_SECONDS``); raises TokenError otherwise.

    ``public_key`` is a key or its ``ed25519:...`` text (see ``core.keys``).
    """
    if isinstance(token, str):
        if not token.isascii():
            raise TokenError("malformed", "not ASCII")
        token = token.encode("ascii")
    if not isinstance(token, bytes):
        raise TokenError("malformed", "not text")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("too-long", f"longer than {MAX_TOKEN_BYTES} bytes")
    if token.count(b".") != 1:
        raise TokenError("malformed", "expected CLAIMS.SIGNATURE")
    encoded_claims, encoded_signature = token.split(b".")
    payload, signature = _unb64url(encoded_claims), _unb64url(encoded_signature)
    if not payload or len(signature) != SIGNATURE_BYTES:
        raise TokenError("malformed", f"expected claims and a {SIGNATURE_BYTES}-byte signature")
    if isinstance(public_key, str):
        public_key = load_public_key(public_key)
    try:
        public_key.verify(signature, payload)
    except InvalidSignature:
        raise TokenError("bad-signature", "not signed by the master's key") from None
    # Only signed bytes are parsed: the master wrote them, but it is checked all the same.
    try:
        claims = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError("bad-claims", "claims are not JSON") from None
    problem = _claims_problem(claims)
    if problem is not None:
        raise TokenError("bad-claims", problem)
    if claims["pkg"] != package_id:
        raise TokenError("wrong-package", "the token is for another package")
    if claims["exp"] + CLOCK_SKEW_SECONDS <= now:
        raise TokenError("expired", f"expired at {claims['exp']}")
    return claims
