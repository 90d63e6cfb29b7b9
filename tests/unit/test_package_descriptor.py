"""packages.descriptor: the sample package parses with its defaults; every rule in the
annotated corpus (tests/data/packages/bad-descriptors.jsonl) is refused with its exact
one-line message; hostile sizes and encodings are refused before anything else."""

import copy
import hashlib
import json
import os
import re

import pytest

from medulla_appliance.packages.descriptor import (
    DEFAULT_INTERPRETER,
    DEFAULT_TIMEOUT,
    END_ERROR,
    END_SUCCESS,
    MAX_DESCRIPTOR_BYTES,
    MAX_FILES,
    MAX_STEPS,
    DescriptorError,
    ExitRule,
    canonical_descriptor_bytes,
    check_file_path,
    descriptor_sha256,
    parse_descriptor,
)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "packages")
SAMPLE = os.path.join(DATA, "native-hello", "descriptor.json")
CORPUS = os.path.join(DATA, "bad-descriptors.jsonl")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def sample():
    with open(SAMPLE, encoding="utf-8") as f:
        return json.load(f)


def apply(base, row):
    """The base descriptor with the corpus row's `set` and `del` (dotted paths) applied."""
    data = copy.deepcopy(base)
    for path, value in row.get("set", {}).items():
        *parents, last = [int(i) if i else k for k, i in _TOKEN.findall(path)]
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    for path in row.get("del", []):
        *parents, last = [int(i) if i else k for k, i in _TOKEN.findall(path)]
        node = data
        for key in parents:
            node = node[key]
        del node[last]
    return data


def corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def minimal(steps, files=()):
    return {"schema": 1, "id": "p", "name": "P", "version": "1", "os": ["linux"],
            "files": list(files), "sequences": {"linux": {"install": steps}}}


def test_sample_package_parses_with_defaults_applied():
    d = parse_descriptor(open(SAMPLE, "rb").read())
    assert (d.id, d.name, d.version, d.os) == ("native-hello", "Hello", "1.0", ("linux",))
    assert [f.path for f in d.files] == ["hello.sh", "data/message.txt"]
    steps = d.sequences["linux"]["install"]
    greet, hello, check, done, cleanup, failed = steps
    assert (greet.type, greet.env) == ("set_env", (("GREETING", "bonjour"),))
    assert greet.on_success == "hello" and greet.on_error == END_ERROR
    assert hello.interpreter == DEFAULT_INTERPRETER and hello.timeout == 60
    assert hello.accept_codes == (0,) and hello.on_success == "check"
    assert check.argv == ("test", "-f", "data/message.txt") and check.on_error == "cleanup"
    assert check.timeout == DEFAULT_TIMEOUT
    assert cleanup.on_success == "failed" and failed.type == "end_error"
    (only,) = d.sequences["linux"]["uninstall"]
    assert only.label == "step1" and only.on_success == END_SUCCESS


def test_sequences_are_read_only_mappings_the_master_can_query():
    d = parse_descriptor(sample())
    assert "install" in d.sequences.get("linux", {})
    with pytest.raises(TypeError):
        d.sequences["linux"]["install"] = ()


def test_after_the_last_step_comes_end_success_and_errors_go_to_end_error():
    d = parse_descriptor(minimal([{"type": "command", "argv": ["true"]},
                                  {"type": "command", "argv": ["false"], "label": "two"}]))
    first, second = d.sequences["linux"]["install"]
    assert (first.label, first.on_success, first.on_error) == ("step1", "two", END_ERROR)
    assert (second.on_success, second.on_error) == (END_SUCCESS, END_ERROR)


def test_exit_rules_match_ranges_and_their_negation():
    inside, outside = ExitRule(100, 199, False, "x"), ExitRule(0, 0, True, "y")
    assert inside.matches(100) and inside.matches(199) and not inside.matches(200)
    assert outside.matches(3010) and outside.matches(-1) and not outside.matches(0)


@pytest.mark.parametrize("row", corpus(), ids=lambda row: row["rule"])
def test_every_rule_of_the_corpus_is_refused_with_its_message(row):
    with pytest.raises(DescriptorError) as caught:
        parse_descriptor(apply(sample(), row))
    assert str(caught.value) == row["error"]
    assert "\n" not in str(caught.value)


def test_the_corpus_starts_from_a_valid_descriptor():
    parse_descriptor(apply(sample(), {}))


def test_error_carries_its_json_path_and_message():
    with pytest.raises(DescriptorError) as caught:
        parse_descriptor(apply(sample(), {"set": {
            "sequences.linux.install[2].on_error": "FOO"}}))
    assert caught.value.path == "sequences.linux.install[2].on_error"
    assert caught.value.message == "unknown label 'FOO'"


def test_a_hostile_key_does_not_break_the_one_line_message():
    data = sample()
    data["sequences"]["linux"]["in\nstall"] = []
    with pytest.raises(DescriptorError) as caught:
        parse_descriptor(data)
    assert "\n" not in str(caught.value) and "in\\nstall" in str(caught.value)


# -- sizes and counts -------------------------------------------------------------------


def files(n):
    return [{"path": "f/%05d" % i, "sha256": "0" * 64, "size": 0} for i in range(n)]


def test_ten_thousand_files_are_accepted():
    assert len(parse_descriptor(minimal([{"type": "end_success"}], files(MAX_FILES))).files) \
        == MAX_FILES


def test_ten_thousand_and_one_files_are_refused():
    with pytest.raises(DescriptorError, match=r"^files: 10001 files; at most 10000$"):
        parse_descriptor(minimal([{"type": "end_success"}], files(MAX_FILES + 1)))


def test_a_two_mib_descriptor_is_refused_before_parsing():
    raw = json.dumps(minimal([{"type": "script", "body": "#" * (2 * 1024 * 1024)}])).encode()
    with pytest.raises(DescriptorError, match=r"^descriptor is \d+ bytes; at most 1048576"):
        parse_descriptor(raw)


def test_one_mib_is_the_limit():
    body = "#" * MAX_DESCRIPTOR_BYTES
    raw = json.dumps(minimal([{"type": "script", "body": ""}])).encode()
    room = MAX_DESCRIPTOR_BYTES - len(raw)
    fits = raw.replace(b'"body": ""', b'"body": "' + body[:room].encode() + b'"')
    assert len(fits) == MAX_DESCRIPTOR_BYTES
    parse_descriptor(fits)
    with pytest.raises(DescriptorError):
        parse_descriptor(fits[:-1] + b" }")


def test_more_than_a_thousand_steps_are_refused():
    with pytest.raises(DescriptorError, match="1001 steps; at most 1000"):
        parse_descriptor(minimal([{"type": "wait", "seconds": 0}] * (MAX_STEPS + 1)))


@pytest.mark.parametrize("raw, message", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"schema": 1, "schema": 1}', "duplicate key 'schema'"),
    (b'{"schema": NaN}', "NaN is not a number"),
    (b'{"schema": 1e400}', "schema: expected 1, got inf"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b'{"schema": 1' + b"1" * 5000 + b"}", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[]", "expected an object, got list"),
    (b'"\\ud800"', "expected an object, got str"),
])
def test_hostile_bytes_are_refused_cleanly(raw, message):
    with pytest.raises(DescriptorError, match=re.escape(message)):
        parse_descriptor(raw)


# -- the exact bytes the master signs ---------------------------------------------------


def test_sha256_is_of_the_exact_bytes():
    raw = open(SAMPLE, "rb").read()
    assert descriptor_sha256(raw) == hashlib.sha256(raw).hexdigest()


def test_canonical_bytes_round_trip_and_do_not_depend_on_key_order():
    d = parse_descriptor(sample())
    canonical = canonical_descriptor_bytes(d)
    assert parse_descriptor(canonical) == d
    shuffled = json.dumps(dict(reversed(list(sample().items())))).encode()
    assert canonical_descriptor_bytes(parse_descriptor(shuffled)) == canonical
    assert canonical == json.dumps(json.loads(canonical), sort_keys=True,
                                   separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(canonical)["sequences"]["linux"]["install"][1]["on_success"] == "check"


def test_canonical_bytes_make_defaults_explicit():
    data = json.loads(canonical_descriptor_bytes(parse_descriptor(
        minimal([{"type": "script", "body": "true"}]))))
    (step,) = data["sequences"]["linux"]["install"]
    assert step == {"type": "script", "label": "step1", "on_success": END_SUCCESS,
                    "on_error": END_ERROR, "interpreter": "/bin/sh", "body": "true",
                    "timeout": 3600, "accept_codes": [0], "on_exit": []}


@pytest.mark.parametrize("path, ok", [
    ("a", True), ("a/b/c.txt", True), ("ünïcode/ok", True), ("a b", True),
    ("..", False), ("a/..", False), ("../a", False), ("/a", False), ("a\\b", False),
    ("a//b", False), ("a/", False), ("./a", False), ("a\x00", False), ("a\x7f", False),
    ("descriptor.json", False), ("sub/descriptor.json", True), ("x" * 256, False),
])
def test_file_path_rules(path, ok):
    assert (check_file_path(path) is None) == ok
