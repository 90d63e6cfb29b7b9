"""Properties of the envelope codec: any JSON data round-trips; any input fails cleanly."""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medulla_appliance.core.envelope import (
    Envelope,
    EnvelopeError,
    decode,
    encode,
    verify,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SENDER, RECIPIENT = "master@medulla.example/master", "pc01.abc@medulla.example/aa"
NOW = 1_763_820_000.0

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=40,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=8)
# Lone surrogates and control characters: what a JSON "\uXXXX" escape can carry.
hostile_strings = st.text(st.characters(exclude_categories=()), max_size=40)
hostile_values = hostile_strings | st.dictionaries(hostile_strings, hostile_strings, max_size=3)
# Large, repetitive data so that some examples cross the compression threshold.
big_strings = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=8),
                        st.integers(1, 6000))


def sign(data):
    env = Envelope.new("inventory.report", data, now=NOW, rand=lambda n: b"\x07" * n)
    return env, encode(env, KEY, SENDER, RECIPIENT)


@given(json_objects)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_object_round_trips(data):
    env, body = sign(data)
    signed = decode(body)
    verify(signed, KEY.public_key(), SENDER, RECIPIENT)
    assert signed.envelope == env
    assert json.dumps(signed.envelope.data, sort_keys=True) == json.dumps(data, sort_keys=True)


@given(st.dictionaries(st.text(max_size=5), big_strings, min_size=1, max_size=4))
@settings(max_examples=50)
def test_large_data_round_trips_through_compression(data):
    env, body = sign(data)
    signed = decode(body)
    verify(signed, KEY.public_key(), SENDER, RECIPIENT)
    assert signed.envelope.data == data


def decode_fails_cleanly(body):
    try:
        decode(body)
    except EnvelopeError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_random_bytes_only_raise_envelope_error(body):
    decode_fails_cleanly(body)


@given(st.text(max_size=2048))
@settings(max_examples=500)
def test_random_text_only_raise_envelope_error(body):
    decode_fails_cleanly(body)


@given(st.data())
@settings(max_examples=500)
def test_mutated_valid_bodies_only_raise_envelope_error(draw):
    _, body = sign({"k": "v", "n": [1, 2]})
    obj = json.loads(body)
    for _ in range(draw.draw(st.integers(1, 3))):
        key = draw.draw(st.sampled_from(sorted(obj) + ["data_z", "extra"]))
        obj[key] = draw.draw(json_values | hostile_values)
    decode_fails_cleanly(json.dumps(obj))


@given(st.text(max_size=300), st.integers(0, 400))
@settings(max_examples=300)
def test_truncated_or_spliced_bodies_only_raise_envelope_error(junk, cut):
    _, body = sign({"k": "v"})
    decode_fails_cleanly(body[:cut] + junk)
