"""Download tokens: what the master signs, a relay accepts, and every way one is refused."""

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medulla_appliance.core import keys
from medulla_appliance.core.envelope import canonical_json
from medulla_appliance.packages.token import (
    CLOCK_SKEW_SECONDS,
    MAX_TOKEN_BYTES,
    TokenError,
    check_token,
    make_token,
)

NOW = 1_763_820_000
MASTER = keys.generate_private_key()
OTHER = keys.generate_private_key()
CLAIMS = {"pkg": "firefox-128.0", "dep": "dep-8f3c", "sub": "pc1.abc@medulla.test",
          "exp": NOW + 3600}


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(payload: bytes, key=MASTER) -> str:
    return b64url(payload) + "." + b64url(key.sign(payload))


def reason_of(token, *, package_id="firefox-128.0", now=NOW, key=MASTER):
    with pytest.raises(TokenError) as err:
        check_token(token, key.public_key(), package_id=package_id, now=now)
    return err.value.reason


def test_a_token_made_by_the_master_checks_and_returns_its_claims():
    token = make_token(MASTER, CLAIMS, NOW)
    assert check_token(token, MASTER.public_key(), package_id="firefox-128.0", now=NOW) == CLAIMS


def test_the_token_is_canonical_claims_dot_signature_over_those_bytes():
    token = make_token(MASTER, CLAIMS, NOW)
    claims_part, signature_part = token.split(".")
    payload = base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4))
    assert payload == canonical_json(CLAIMS)
    assert "=" not in token and "+" not in token and "/" not in token
    signature = base64.urlsafe_b64decode(signature_part + "=" * (-len(signature_part) % 4))
    MASTER.public_key().verify(signature, payload)  # raises if not


def test_the_public_key_may_be_given_as_its_text():
    token = make_token(MASTER, CLAIMS, NOW)
    text = keys.public_key_text(MASTER)
    assert check_token(token.encode(), text, package_id="firefox-128.0", now=NOW)["dep"] == \
        "dep-8f3c"


def test_token_for_another_package_is_wrong_package():
    assert reason_of(make_token(MASTER, CLAIMS, NOW), package_id="firefox-129.0") == \
        "wrong-package"


def test_expired_token_is_refused_after_the_skew_allowance():
    token = make_token(MASTER, CLAIMS, NOW)
    exp = CLAIMS["exp"]
    assert check_token(token, MASTER.public_key(), package_id="firefox-128.0",
                       now=exp + CLOCK_SKEW_SECONDS - 1)
    assert reason_of(token, now=exp + CLOCK_SKEW_SECONDS) == "expired"


def test_token_signed_by_another_key_is_bad_signature():
    assert reason_of(make_token(OTHER, CLAIMS, NOW)) == "bad-signature"


def test_claims_changed_after_signing_are_bad_signature():
    token = make_token(MASTER, CLAIMS, NOW)
    forged = dict(CLAIMS, exp=NOW + 10**6)
    assert reason_of(b64url(canonical_json(forged)) + "." + token.split(".")[1]) == \
        "bad-signature"


@pytest.mark.parametrize("token", [
    "", ".", "abc", "a.b.c", "!!!.abc", "abc.!!!", "é.abc",
    b64url(b"{}") + "." + b64url(b"x" * 63),           # short signature
    "." + b64url(b"x" * 64),                            # no claims
    b64url(b"{}") + "=." + b64url(b"x" * 64),           # padding
    b64url(b"{}")[:-1] + "D." + b64url(b"x" * 64),      # non-canonical trailing bits
])
def test_malformed_tokens_are_refused_as_malformed(token):
    assert reason_of(token) == "malformed"


def test_a_token_longer_than_2_kib_is_refused_before_decoding():
    assert reason_of("a" * (MAX_TOKEN_BYTES + 1)) == "too-long"


@pytest.mark.parametrize("claims", [
    [1, 2], "pkg", {"pkg": "firefox-128.0"},
    dict(CLAIMS, extra=1), dict(CLAIMS, exp="soon"), dict(CLAIMS, exp=True),
    dict(CLAIMS, exp=1.5), dict(CLAIMS, dep=""), dict(CLAIMS, sub=None),
    dict(CLAIMS, pkg="../etc"),
])
def test_signed_but_invalid_claims_are_bad_claims(claims):
    assert reason_of(signed(json.dumps(claims).encode())) == "bad-claims"


def test_signed_bytes_that_are_not_json_are_bad_claims():
    assert reason_of(signed(b"\xff not json")) == "bad-claims"


@pytest.mark.parametrize("claims", [
    {"pkg": "p", "dep": "d", "sub": "s"}, dict(CLAIMS, pkg="a/b"), dict(CLAIMS, exp="1"),
    dict(CLAIMS, sub=""), dict(CLAIMS, extra=True),
])
def test_make_token_refuses_invalid_claims(claims):
    with pytest.raises(ValueError):
        make_token(MASTER, claims, NOW)


def test_make_token_refuses_a_token_already_expired():
    with pytest.raises(ValueError, match="not after now"):
        make_token(MASTER, dict(CLAIMS, exp=NOW), NOW)


def test_token_error_names_only_known_reasons():
    with pytest.raises(ValueError):
        TokenError("nope")
    assert str(TokenError("expired", "at 5")) == "expired: at 5"


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_input_is_a_token_error_never_a_crash(token):
    with pytest.raises(TokenError):
        check_token(token, MASTER.public_key(), package_id="p", now=NOW)
