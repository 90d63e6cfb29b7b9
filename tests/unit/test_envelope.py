"""The envelope codec: round trips, signatures bound to JIDs, every refusal with its reason."""

import base64
import json
import random
import zlib
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock

from medulla_appliance.core import envelope as envmod
from medulla_appliance.core.envelope import (
    COMPRESS_ABOVE_BYTES,
    MAX_ENVELOPE_BYTES,
    MAX_INFLATED_BYTES,
    MAX_SKEW_SECONDS,
    Envelope,
    EnvelopeError,
    ReplayGuard,
    bare,
    canonical_json,
    decode,
    encode,
    open_envelope,
    verify,
)

NOW = 1_763_820_000.123
MASTER = "master@medulla.example/master"
AGENT = "pc01.abc@medulla.example/0a1b2c3d4e5f"
MASTER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def seeded_rand(seed=1):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def make(data=None, action="deploy.start", now=NOW, **kw):
    return Envelope.new(action, {"package": "firefox"} if data is None else data,
                        now=now, rand=seeded_rand(), **kw)


def wire(env=None, key=MASTER_KEY, sender=MASTER, recipient=AGENT):
    return encode(env or make(), key, sender, recipient)


DROP = object()


def body_dict(**changes):
    """A valid wire body as a dict, with ``changes`` applied (DROP deletes a key)."""
    body = json.loads(wire())
    for key, value in changes.items():
        if value is DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


def refused(body, reason):
    if isinstance(body, dict):
        body = json.dumps(body)
    with pytest.raises(EnvelopeError) as info:
        decode(body)
    assert info.value.reason == reason, str(info.value)
    assert info.value.code == envmod.ERROR_CODES[reason]
    return str(info.value)


# --- building and round trips ---------------------------------------------------------------

def test_new_stamps_ms_nonce_and_session_from_action():
    env = make()
    assert env.ts == 1_763_820_000_123
    assert len(base64.b64decode(env.nonce)) == 16
    assert env.sessionid.startswith("deploy-") and len(env.sessionid) == len("deploy-") + 16
    assert env.v == 1 and env.ret == 0 and not env.is_result


def test_reply_keeps_session_and_prefixes_result():
    env = make()
    answer = env.reply({"state": "DEPLOYMENT SUCCESS"}, now=NOW + 1, rand=seeded_rand(2))
    assert answer.action == "result.deploy.start"
    assert answer.sessionid == env.sessionid and answer.is_result
    with pytest.raises(ValueError):
        answer.reply({}, now=NOW)


def test_small_data_round_trips_uncompressed():
    env = make({"name": "Café ✓", "n": 3, "ok": True, "x": None, "f": 1.5, "l": [1, "a"]})
    body = wire(env)
    assert '"data":' in body and "data_z" not in body
    signed = decode(body)
    verify(signed, MASTER_KEY.public_key(), MASTER, AGENT)
    assert signed.envelope == env


def test_large_data_goes_compressed_and_round_trips():
    env = make({"inventory": "<xml>" + "x" * (COMPRESS_ABOVE_BYTES * 4) + "</xml>"})
    body = wire(env)
    assert '"data_z":' in body and len(body) < COMPRESS_ABOVE_BYTES
    assert open_envelope(body, MASTER_KEY.public_key(), MASTER, AGENT,
                         ReplayGuard(clock_at())) == env


def test_body_is_canonical_json():
    body = wire()
    assert body.encode() == canonical_json(json.loads(body))


def test_encode_refuses_what_would_exceed_the_envelope_limit():
    incompressible = base64.b64encode(random.Random(0).randbytes(300 * 1024)).decode()
    with pytest.raises(EnvelopeError) as info:
        wire(make({"blob": incompressible}))
    assert info.value.reason == "oversize" and info.value.code == 413


def test_encode_refuses_data_that_inflates_beyond_the_receiver_limit():
    with pytest.raises(EnvelopeError) as info:
        wire(make({"zeros": "0" * (MAX_INFLATED_BYTES + 1)}))
    assert info.value.reason == "oversize"


def test_encode_refuses_nan_in_data():
    with pytest.raises(EnvelopeError) as info:
        wire(make({"x": float("nan")}))
    assert info.value.reason == "bad-field"


def test_envelope_refuses_invalid_fields_at_construction():
    with pytest.raises(EnvelopeError, match="action"):
        make(action="Deploy Start")
    with pytest.raises(EnvelopeError, match="ret"):
        make(ret=True)


def test_canonical_json_sorted_compact_utf8_and_no_nan():
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            canonical_json({"x": bad})


def test_bare_drops_resource_and_lowercases():
    assert bare("PC01.ABC@Medulla.Example/0A:1B/x") == "pc01.abc@medulla.example"
    assert bare("master@medulla.example") == "master@medulla.example"


# --- signatures -----------------------------------------------------------------------------

def test_signature_ignores_resource_and_case_of_jids():
    verify(decode(wire()), MASTER_KEY.public_key(), "MASTER@medulla.example/other",
           "pc01.abc@MEDULLA.example")


@pytest.mark.parametrize("sender,recipient", [
    ("attacker@medulla.example/x", AGENT),          # same body re-sent by another account
    (MASTER, "pc02.xyz@medulla.example/aa"),        # same body forwarded to another machine
    (AGENT, MASTER),                                # reflected back
])
def test_signature_is_bound_to_sender_and_recipient(sender, recipient):
    with pytest.raises(EnvelopeError) as info:
        verify(decode(wire()), MASTER_KEY.public_key(), sender, recipient)
    assert info.value.reason == "bad-signature" and info.value.code == 401


def test_signature_by_another_key_fails():
    with pytest.raises(EnvelopeError, match="bad-signature"):
        verify(decode(wire(key=OTHER_KEY)), MASTER_KEY.public_key(), MASTER, AGENT)


def _other_nonce():
    return base64.b64encode(b"\x01" * 16).decode()


@pytest.mark.parametrize("field,value", [
    ("action", "command.run"),
    ("sessionid", "deploy-0000000000000000"),
    ("ret", 1),
    ("ts", 1_763_820_000_124),
    ("nonce", _other_nonce()),
    ("data", {"package": "firefox", "extra": 1}),
    ("data", {"package": "chromium"}),
])
def test_tampering_with_any_signed_field_fails(field, value):
    signed = decode(json.dumps(body_dict(**{field: value})))  # still well-formed
    with pytest.raises(EnvelopeError, match="bad-signature"):
        verify(signed, MASTER_KEY.public_key(), MASTER, AGENT)


def test_tampering_with_compressed_data_fails():
    body = json.loads(wire(make({"big": "y" * (2 * COMPRESS_ABOVE_BYTES)})))
    body["data_z"] = base64.b64encode(
        zlib.compress(json.dumps({"big": "z" * (2 * COMPRESS_ABOVE_BYTES)}).encode())).decode()
    with pytest.raises(EnvelopeError, match="bad-signature"):
        verify(decode(json.dumps(body)), MASTER_KEY.public_key(), MASTER, AGENT)


def test_tampering_with_signature_fails():
    body = body_dict()
    sig = bytearray(base64.b64decode(body["sig"]))
    sig[5] ^= 0x40
    body["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(EnvelopeError, match="bad-signature"):
        verify(decode(json.dumps(body)), MASTER_KEY.public_key(), MASTER, AGENT)


# --- validation: every refusal has its reason -----------------------------------------------

def test_ten_megabyte_body_refused_before_parsing():
    for body in ("{" + " " * (10 * 1024 * 1024) + "}", b"[" * (10 * 1024 * 1024)):
        with mock.patch.object(envmod.json, "loads") as loads:
            refused(body, "oversize")
        loads.assert_not_called()


def test_size_limit_counts_utf8_bytes_not_characters():
    body = '{"pad":"' + "é" * (MAX_ENVELOPE_BYTES // 2 + 10) + '"}'
    assert len(body) < MAX_ENVELOPE_BYTES
    with mock.patch.object(envmod.json, "loads") as loads:
        refused(body, "oversize")
    loads.assert_not_called()


def test_zip_bomb_in_data_z_refused():
    bomb = zlib.compress(b'{"a":"' + b"0" * (64 * 1024 * 1024) + b'"}', 9)
    assert len(bomb) < 100 * 1024
    msg = refused(body_dict(data=DROP, data_z=base64.b64encode(bomb).decode()), "oversize")
    assert "data_z" in msg


@pytest.mark.parametrize("data_z,expected", [
    ("not base64!", "data_z"),
    (base64.b64encode(b"not zlib").decode(), "zlib"),
    (base64.b64encode(zlib.compress(b'{"a":1}')[:-3]).decode(), "complete"),
    (base64.b64encode(zlib.compress(b'{"a":1}') + b"junk").decode(), "complete"),
    (base64.b64encode(zlib.compress(b"\xff\xfe")).decode(), "UTF-8"),
    (base64.b64encode(zlib.compress(b"[1, 2]")).decode(), "object"),
    (12, "data_z"),
])
def test_bad_data_z_refused(data_z, expected):
    assert expected in refused(body_dict(data=DROP, data_z=data_z), "bad-field")


def test_bad_json_inside_data_z_refused():
    refused(body_dict(data=DROP, data_z=base64.b64encode(zlib.compress(b"{")).decode()),
            "bad-json")


@pytest.mark.parametrize("body", [
    "", "not json", "{", "[]", '"text"', "1", "null", b"\xff\xfe{}", "\ud800",
    '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}', '{"a":1e999}', "[" * 100_000,
    '{"a":' + "9" * 5000 + "}",
])
def test_not_a_json_object_refused(body):
    refused(body, "bad-json")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_inside_data_refused(constant):
    body = wire().replace('"data":{', '"data":{"x":%s,' % constant)
    refused(body, "bad-json")


def test_duplicate_keys_refused_at_top_level_and_in_data():
    body = wire()
    assert "duplicate" in refused(body[:-1] + ',"ret":1}', "bad-json")
    assert "duplicate" in refused(body.replace('"data":{', '"data":{"package":"x",'),
                                  "bad-json")


def test_unknown_key_refused_and_named():
    assert "'from'" in refused(body_dict(**{"from": "master@x"}), "unknown-field")


@pytest.mark.parametrize("field", ["v", "action", "sessionid", "ret", "ts", "nonce", "sig"])
def test_missing_key_refused_and_named(field):
    assert field in refused(body_dict(**{field: DROP}), "bad-field")


def test_data_and_data_z_exactly_one():
    refused(body_dict(data=DROP), "bad-field")
    refused(body_dict(data_z=base64.b64encode(zlib.compress(b"{}")).decode()), "bad-field")


@pytest.mark.parametrize("field,value", [
    ("v", 2), ("v", True), ("v", 1.0), ("v", "1"),
    ("action", "Deploy.start"), ("action", "deploy..start"), ("action", ".deploy"),
    ("action", "deploy.start\n"), ("action", "a" * 65), ("action", 5), ("action", "dé.x"),
    ("sessionid", ""), ("sessionid", "a" * 129), ("sessionid", "a b"), ("sessionid", "x\n"),
    ("sessionid", 7),
    ("ret", True), ("ret", False), ("ret", 2**31), ("ret", -(2**31) - 1), ("ret", 0.0),
    ("ret", "0"), ("ret", None),
    ("ts", True), ("ts", 1.5e12), ("ts", -1), ("ts", 2**53), ("ts", "1763820000123"),
    ("nonce", base64.b64encode(b"x" * 15).decode()),
    ("nonce", base64.b64encode(b"x" * 17).decode()), ("nonce", "!" * 24), ("nonce", 16),
    ("nonce", base64.b64encode(b"x" * 16).decode().rstrip("=")),
    ("data", []), ("data", "text"), ("data", 1),
    ("sig", base64.b64encode(b"s" * 63).decode()), ("sig", "@@"), ("sig", 0),
])
def test_wrong_field_refused_and_message_names_the_field(field, value):
    msg = refused(body_dict(**{field: value}), "bad-field")
    assert msg.startswith(f"bad-field: {field}: expected ")


def test_ret_at_the_32_bit_bounds_accepted():
    for ret in (-(2**31), 2**31 - 1):
        assert decode(json.dumps(body_dict(ret=ret))).envelope.ret == ret


def test_non_canonical_base64_refused():
    # 16 bytes leave 4 unused bits in the last character: "B" there decodes to the same bytes.
    alias = "A" * 21 + "B=="
    assert base64.b64decode(alias) == bytes(16)
    refused(body_dict(nonce=alias), "bad-field")
    sig = body_dict()["sig"]
    refused(body_dict(sig=sig[:-2] + "\n" + sig[-2:]), "bad-field")


def test_lone_surrogate_in_data_refused():
    refused(wire().replace('"data":{', '"data":{"x":"\\ud800",'), "bad-field")


def test_error_text_is_one_line_and_bounded():
    hostile = "évil\n" * 10_000
    for msg in (refused(body_dict(sessionid=hostile), "bad-field"),
                refused(body_dict(**{hostile: 1}), "unknown-field")):
        assert "\n" not in msg and len(msg) < 400
    err = EnvelopeError("unknown-action", "no handler\nfor x")
    assert str(err) == "unknown-action: no handler for x" and err.code == 404


# --- replay and clock window ----------------------------------------------------------------

def clock_at(t=NOW):
    clock = Clock()
    clock.advance(t)
    return clock


def test_open_envelope_accepts_once_then_refuses_replay():
    guard = ReplayGuard(clock_at())
    body = wire()
    env = open_envelope(body, MASTER_KEY.public_key(), MASTER, AGENT, guard)
    assert env.data == {"package": "firefox"}
    with pytest.raises(EnvelopeError) as info:
        open_envelope(body, MASTER_KEY.public_key(), MASTER, AGENT, guard)
    assert info.value.reason == "replay" and info.value.code == 409


def test_forged_envelope_never_reaches_the_replay_cache():
    guard = ReplayGuard(clock_at())
    with pytest.raises(EnvelopeError, match="bad-signature"):
        open_envelope(wire(key=OTHER_KEY), MASTER_KEY.public_key(), MASTER, AGENT, guard)
    assert len(guard) == 0
    open_envelope(wire(), MASTER_KEY.public_key(), MASTER, AGENT, guard)


def test_same_nonce_from_two_senders_is_not_a_replay():
    guard = ReplayGuard(clock_at())
    env = make()
    guard.check(env, "a@x/r1")
    guard.check(env, "b@x/r1")
    with pytest.raises(EnvelopeError, match="replay"):
        guard.check(env, "A@X/other-resource")


@pytest.mark.parametrize("offset,ok", [
    (0, True), (MAX_SKEW_SECONDS, True), (-MAX_SKEW_SECONDS, True),
    (MAX_SKEW_SECONDS + 1, False), (-MAX_SKEW_SECONDS - 1, False), (86400, False),
])
def test_stale_outside_the_window(offset, ok):
    guard = ReplayGuard(clock_at())
    env = make(now=NOW + offset)
    if ok:
        guard.check(env, MASTER)
    else:
        with pytest.raises(EnvelopeError) as info:
            guard.check(env, MASTER)
        assert info.value.reason == "stale" and info.value.code == 408
        assert len(guard) == 0


def test_replay_after_the_window_is_stale_not_accepted():
    clock = clock_at()
    guard = ReplayGuard(clock)
    env = make()
    guard.check(env, MASTER)
    clock.advance(MAX_SKEW_SECONDS + 1)
    with pytest.raises(EnvelopeError, match="stale"):
        guard.check(env, MASTER)
    assert len(guard) == 0  # the entry was pruned: nothing can replay it any more


def test_pruning_keeps_memory_bounded():
    clock = clock_at()
    guard = ReplayGuard(clock, window=10)
    rand = seeded_rand(7)
    sizes = []
    for _ in range(200):  # 200 s of 50 envelopes a second, window 10 s
        for _ in range(50):
            guard.check(Envelope.new("machine.ping", {}, now=clock.seconds(), rand=rand), MASTER)
        clock.advance(1)
        sizes.append(len(guard))
    assert max(sizes) <= 50 * 22  # at most 2 x window of traffic is ever held
    assert len(guard._queue) == len(guard)


def test_full_cache_refuses_instead_of_growing():
    clock = clock_at()
    guard = ReplayGuard(clock, window=10, max_entries=3)
    rand = seeded_rand(3)
    for _ in range(3):
        guard.check(Envelope.new("machine.ping", {}, now=clock.seconds(), rand=rand), MASTER)
    fourth = Envelope.new("machine.ping", {}, now=clock.seconds(), rand=rand)
    with pytest.raises(EnvelopeError) as info:
        guard.check(fourth, MASTER)
    assert info.value.reason == "replay-cache-full" and info.value.code == 503
    assert len(guard) == 3
    clock.advance(11)
    guard.check(Envelope.new("machine.ping", {}, now=clock.seconds(), rand=rand), MASTER)
    assert len(guard) == 1
