"""Ed25519 keys and the enrolment MAC (PROTOCOL.md, "Keys and enrolment").

A private key file is PEM PKCS#8, unencrypted, mode 0600, created atomically on first use.
Public keys travel as ``ed25519:<base64 of the 32 raw bytes>``; people compare them by
``fingerprint``.
"""

import base64
import binascii
import hashlib
import hmac
import os
import stat

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medulla_appliance.core.envelope import canonical_json
from medulla_appliance.core.private_file import create_private_file

PUBLIC_KEY_PREFIX = "ed25519:"
PUBLIC_KEY_BYTES = 32
_SHOW_LIMIT = 80
# A PEM Ed25519 key is 119 bytes; no reason to read a huge file into memory.
_MAX_KEY_FILE_BYTES = 64 * 1024


class KeyFileError(ValueError):
    """A private key file that is missing its protections, unreadable or not a key."""


class PublicKeyError(ValueError):
    """Text that is not an ``ed25519:`` public key."""


def generate_private_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def _read_private_key(path: str) -> Ed25519PrivateKey:
    try:
        # O_NOFOLLOW: a symlink planted in the state directory must not choose our key.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open private key: {exc.strerror}") from None
    try:
        # fstat on the open file, not stat on the name, so the checked file is the one read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path}: private key is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(f"{path}: private key is accessible by group or others "
                               f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
        with os.fdopen(os.dup(fd), "rb") as handle:
            pem = handle.read(_MAX_KEY_FILE_BYTES)
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def _create_private_key(path: str) -> Ed25519PrivateKey:
    key = generate_private_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        if not create_private_file(path, pem):
            return _read_private_key(path)  # another start made it first: use that one
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create private key: {exc.strerror or exc}") from None
    return key


def load_or_create_private_key(path) -> Ed25519PrivateKey:
    """The key in ``path``, created there (0600) if the file does not exist."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return _create_private_key(path)
    return _read_private_key(path)


def _public(key) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def _raw(key) -> bytes:
    return _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key) -> str:
    """``ed25519:<base64>`` of the public half of ``key`` (private or public)."""
    return PUBLIC_KEY_PREFIX + base64.b64encode(_raw(key)).decode("ascii")


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``public_key_text`` output; raises PublicKeyError (a ValueError) otherwise."""
    shown = repr(text[:_SHOW_LIMIT]) if isinstance(text, str) else type(text).__name__
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX) or not text.isascii():
        raise PublicKeyError(f"expected 'ed25519:<base64>', got {shown}")
    encoded = text[len(PUBLIC_KEY_PREFIX):]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise PublicKeyError(f"bad base64 in public key {shown}") from None
    if len(raw) != PUBLIC_KEY_BYTES or base64.b64encode(raw).decode("ascii") != encoded:
        raise PublicKeyError(f"expected {PUBLIC_KEY_BYTES} bytes of canonical base64, "
                             f"got {shown}")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise PublicKeyError(f"not an Ed25519 public key: {shown}") from None


def fingerprint(public_key) -> str:
    """``SHA256:<unpadded base64>`` of the raw public key, in OpenSSH's style."""
    digest = hashlib.sha256(_raw(public_key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def registration_mac(enrolment_key: str, payload: dict) -> str:
    """Hex HMAC-SHA256 of ``canonical_json(payload)`` keyed with the enrolment key."""
    if not enrolment_key:
        # An empty key would make every MAC forgeable.
        raise ValueError("enrolment key is empty")
    return hmac.new(enrolment_key.encode("utf-8"), canonical_json(payload),
                    hashlib.sha256).hexdigest()


def check_registration_mac(enrolment_key: str, payload: dict, mac) -> bool:
    """True when ``mac`` is ``registration_mac(enrolment_key, payload)``; constant time."""
    if not enrolment_key:
        raise ValueError("enrolment key is empty")
    if not isinstance(mac, str):
        return False
    try:
        expected = registration_mac(enrolment_key, payload)
    except (ValueError, RecursionError):
        return False  # a payload that has no canonical form was not MACed by anyone
    return hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8", "replace"))
