"""Properties of parse_descriptor: whatever JSON or bytes come in, the only exception is
DescriptorError (one line); whatever parses survives its canonical form unchanged."""

import copy
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medulla_appliance.packages.descriptor import (
    DescriptorError,
    canonical_descriptor_bytes,
    parse_descriptor,
)

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "packages", "native-hello",
                      "descriptor.json")
with open(SAMPLE, encoding="utf-8") as _f:
    BASE = json.load(_f)

text = st.text(st.characters(exclude_categories=()), max_size=20)
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | text
           | st.sampled_from(["linux", "install", "script", "END_SUCCESS", "hello", "0" * 64]))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner,
                                                                         max_size=5),
    max_leaves=30)
keys = st.sampled_from(["schema", "id", "name", "version", "os", "files", "sequences",
                        "description", "path", "sha256", "size", "type", "label", "body",
                        "argv", "env", "seconds", "timeout", "accept_codes", "on_exit",
                        "on_success", "on_error", "interpreter", "min", "max", "goto"])


def parses_or_refuses(data):
    try:
        descriptor = parse_descriptor(data)
    except DescriptorError as e:
        assert "\n" not in str(e)
        return None
    assert parse_descriptor(canonical_descriptor_bytes(descriptor)) == descriptor
    return descriptor


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys | text, json_values, max_size=8))
def test_any_json_object_parses_or_raises_descriptor_error(data):
    parses_or_refuses(data)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_descriptor_error(raw):
    parses_or_refuses(raw)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


ALL_PATHS = [p for p in _paths(BASE) if p]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), json_values | keys), min_size=1,
                max_size=3))
def test_a_valid_descriptor_with_random_leaves_replaced_parses_or_is_refused(changes):
    data = copy.deepcopy(BASE)
    for path, value in changes:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    parses_or_refuses(data)
    parses_or_refuses(json.dumps(data, allow_nan=True).encode("utf-8", "surrogatepass"))
