"""Key files, public key text, fingerprints and the enrolment MAC."""

import base64
import hashlib
import hmac
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medulla_appliance.core import keys
from medulla_appliance.core.envelope import canonical_json
from medulla_appliance.core.keys import (
    KeyFileError,
    PublicKeyError,
    check_registration_mac,
    fingerprint,
    generate_private_key,
    load_or_create_private_key,
    load_public_key,
    public_key_text,
    registration_mac,
)

ENROLMENT_KEY = "s3cr3t-32-characters-enrolment!!"


def raw_public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def write_pem(path, key, mode=0o600):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(mode)


def test_generate_gives_distinct_ed25519_keys():
    first, second = generate_private_key(), generate_private_key()
    assert isinstance(first, Ed25519PrivateKey)
    assert raw_public(first) != raw_public(second)


def test_first_start_creates_a_0600_pkcs8_key_and_reuses_it(tmp_path):
    path = tmp_path / "agent.key"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert raw_public(load_or_create_private_key(str(path))) == raw_public(key)
    assert os.listdir(tmp_path) == ["agent.key"]  # no temporary file left behind


def test_created_key_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        load_or_create_private_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_key_readable_or_writable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "agent.key"
    write_pem(path, generate_private_key(), mode)
    with pytest.raises(KeyFileError) as info:
        load_or_create_private_key(path)
    assert str(path) in str(info.value) and "chmod 600" in str(info.value)


def test_existing_0400_key_is_accepted(tmp_path):
    path = tmp_path / "agent.key"
    key = generate_private_key()
    write_pem(path, key, 0o400)
    assert raw_public(load_or_create_private_key(path)) == raw_public(key)


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_unparsable_key_file_is_refused_naming_the_path(tmp_path, content):
    path = tmp_path / "agent.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=str(path)):
        load_or_create_private_key(path)


def test_non_ed25519_key_is_refused(tmp_path):
    path = tmp_path / "agent.key"
    write_pem(path, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_private_key(path)


def test_symlink_and_directory_are_refused(tmp_path):
    target = tmp_path / "elsewhere.key"
    write_pem(target, generate_private_key())
    (tmp_path / "link.key").symlink_to(target)
    (tmp_path / "dir.key").mkdir()
    for name in ("link.key", "dir.key"):
        with pytest.raises(KeyFileError, match=name):
            load_or_create_private_key(tmp_path / name)


def test_missing_directory_gives_a_key_file_error(tmp_path):
    with pytest.raises(KeyFileError, match="cannot create"):
        load_or_create_private_key(tmp_path / "nope" / "agent.key")


def test_concurrent_first_start_keeps_the_key_already_on_disk(tmp_path, monkeypatch):
    path = tmp_path / "agent.key"
    winner = generate_private_key()
    real_generate = keys.generate_private_key

    def racing_generate():
        write_pem(path, winner)  # another process finishes first
        return real_generate()

    monkeypatch.setattr(keys, "generate_private_key", racing_generate)
    assert raw_public(load_or_create_private_key(path)) == raw_public(winner)
    assert raw_public(load_or_create_private_key(path)) == raw_public(winner)
    assert os.listdir(tmp_path) == ["agent.key"]


def test_public_key_text_round_trips_from_private_or_public_key():
    key = generate_private_key()
    text = public_key_text(key)
    assert text == public_key_text(key.public_key())
    assert text.startswith("ed25519:") and "\n" not in text
    assert base64.b64decode(text[len("ed25519:"):]) == raw_public(key)
    loaded = load_public_key(text)
    assert isinstance(loaded, Ed25519PublicKey)
    loaded.verify(key.sign(b"hello"), b"hello")


@pytest.mark.parametrize("text", [
    "", "ed25519:", "rsa:AAAA", "AAAA", None, b"ed25519:AAAA",
    "ed25519:" + base64.b64encode(bytes(31)).decode(),
    "ed25519:" + base64.b64encode(bytes(33)).decode(),
    "ed25519:" + base64.b64encode(bytes(32)).decode().rstrip("="),
    "ed25519:" + base64.b64encode(bytes(32)).decode() + "\n",
    "ed25519:" + base64.urlsafe_b64encode(b"\xff" * 32).decode(),
    "ed25519:é" + "A" * 43,
])
def test_bad_public_key_text_is_refused(text):
    with pytest.raises(PublicKeyError) as info:
        load_public_key(text)
    assert isinstance(info.value, ValueError)


def test_public_key_error_does_not_echo_long_input():
    with pytest.raises(PublicKeyError) as info:
        load_public_key("ed25519:" + "A" * 10_000)
    assert len(str(info.value)) < 200


def test_fingerprint_is_openssh_style_sha256_of_raw_key():
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    expected = base64.b64encode(hashlib.sha256(raw_public(key)).digest()).decode().rstrip("=")
    assert fingerprint(key.public_key()) == "SHA256:" + expected
    assert fingerprint(key) == fingerprint(key.public_key())
    assert len(fingerprint(key)) == len("SHA256:") + 43


def test_registration_mac_is_hmac_sha256_of_canonical_json():
    payload = {"hostname": "pc01", "public_key": "ed25519:AAAA", "macs": ["0a:1b"]}
    mac = registration_mac(ENROLMENT_KEY, payload)
    assert mac == hmac.new(ENROLMENT_KEY.encode(), canonical_json(payload),
                           hashlib.sha256).hexdigest()
    assert mac == registration_mac(ENROLMENT_KEY, dict(reversed(payload.items())))
    assert check_registration_mac(ENROLMENT_KEY, payload, mac)


@pytest.mark.parametrize("change", [
    lambda key, payload, mac: ("x" + key[1:], payload, mac),
    lambda key, payload, mac: (key, {**payload, "hostname": "pc02"}, mac),
    lambda key, payload, mac: (key, payload, mac.upper()),
    lambda key, payload, mac: (key, payload, mac[:-1]),
    lambda key, payload, mac: (key, payload, ""),
    lambda key, payload, mac: (key, payload, None),
    lambda key, payload, mac: (key, payload, "é" * 64),
    lambda key, payload, mac: (key, {"x": float("nan")}, mac),
])
def test_wrong_registration_mac_is_refused(change):
    payload = {"hostname": "pc01"}
    args = change(ENROLMENT_KEY, payload, registration_mac(ENROLMENT_KEY, payload))
    assert check_registration_mac(*args) is False


def test_empty_enrolment_key_is_a_configuration_error():
    with pytest.raises(ValueError):
        registration_mac("", {})
    with pytest.raises(ValueError):
        check_registration_mac("", {}, "00")
