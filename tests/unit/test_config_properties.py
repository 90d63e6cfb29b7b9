"""Properties of the INI reader: escaped values read back exactly; any bytes fail cleanly."""

import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from medulla_appliance.core.config import Config, ConfigError, Key, Schema, load
from medulla_appliance.core.ini import escape, split_list, unescape

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
# Printable text as an admin could type it on one line; control characters are refused or
# would end the line, so they are left to the hostile-input properties below.
LINE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30) \
    .map(str.strip).filter(bool)
# A continuation line starting with # or ; is a comment, whatever its indentation.
CONT_LINE = LINE.filter(lambda line: line[0] not in "#;")
STR_VALUES = st.builds(lambda first, more: "\n".join([first] + more),
                       LINE, st.lists(CONT_LINE, max_size=2))
LIST_ITEMS = st.lists(LINE, max_size=5)
BOOL_WORDS = {True: ("1", "yes", "TRUE", "On"), False: ("0", "No", "false", "OFF")}
VALUES = {"str": STR_VALUES, "int": st.integers(-10**12, 10**12), "bool": st.booleans(),
          "list": LIST_ITEMS}
LAYERS = ("master.ini", "master.ini.local", "master.d/10-a.ini", "master.d/20-b.ini")
DEFAULTS = {"str": "", "int": 0, "bool": False, "list": ()}


def render(kind, value, draw_word):
    """A value as an admin writes it, with Medulla escaping; continuation lines indented."""
    if kind == "str":
        return "\n    ".join(escape(line) for line in value.split("\n"))
    if kind == "bool":
        return draw_word(value)
    if kind == "list":
        return " , ".join(escape(item) for item in value)
    return str(value)


def expected(kind, value):
    return tuple(dict.fromkeys(value)) if kind == "list" else value


@st.composite
def configurations(draw):
    """A schema, the files that set it (by layer name) and the values load must return."""
    sections = draw(st.dictionaries(NAMES, st.dictionaries(NAMES, st.just(None), min_size=1,
                                                           max_size=4), min_size=1, max_size=3))
    kinds, files, want = {}, {layer: [] for layer in LAYERS}, {}
    for section, keys in sections.items():
        for key in keys:
            kind = draw(st.sampled_from(sorted(VALUES)))
            kinds[section, key] = kind
            # Each key is set in some layers, each time to a new value: the last layer wins.
            layers = sorted(draw(st.sets(st.sampled_from(range(len(LAYERS))), max_size=3)))
            for layer in layers:
                value = draw(VALUES[kind])
                text = render(kind, value, lambda v: draw(st.sampled_from(BOOL_WORDS[v])))
                sep = draw(st.sampled_from([" = ", "=", ": ", " : "]))
                files[LAYERS[layer]].append((section, f"{key}{sep}{text}"))
                want[section, key] = (expected(kind, value), LAYERS[layer])
    schema = Schema({s: {k: Key(kinds[s, k], DEFAULTS[kinds[s, k]]) for k in keys}
                     for s, keys in sections.items()})
    texts = {}
    for layer, lines in files.items():
        out = []
        for section, line in lines:
            # Headers repeat freely: a section opened twice in one file merges.
            if draw(st.booleans()) or not out or out[-1][0] != section:
                out.append((section, f"\n# comment\n[{section}]"))
            out.append((section, line + draw(st.sampled_from(["", "\n", "\n; note"]))))
        texts[layer] = "\n".join(text for _, text in out) + "\n"
    return schema, texts, want


@settings(max_examples=150, deadline=None)
@given(configurations())
def test_written_values_load_back_exactly_with_the_last_layer_winning(case):
    schema, texts, want = case
    with tempfile.TemporaryDirectory() as folder:
        os.mkdir(os.path.join(folder, "master.d"))
        for layer, text in texts.items():
            with open(os.path.join(folder, layer), "w", encoding="utf-8") as handle:
                handle.write(text)
        cfg = load(os.path.join(folder, "master.ini"), schema)
        for section, keys in schema.sections.items():
            for key, spec in keys.items():
                value, layer = want.get((section, key), (spec.default, None))
                assert cfg[section][key] == expected(spec.kind, value), (section, key)
                file, _line = cfg.origin(section, key)
                assert file == (os.path.join(folder, layer) if layer else "default")


@given(st.lists(st.text(max_size=12), max_size=6))
def test_escaped_items_split_back_into_the_same_items(items):
    raw = ",".join(escape(item) for item in items)
    assert [unescape(item) for item in split_list(raw)] == (items or [""])
    assert all(unescape(escape(item)) == item for item in items)


ALL_KINDS = Schema({
    "s": {"a": Key("str"), "b": Key("int", 1, min=0, max=9), "c": Key("float"),
          "d": Key("bool"), "e": Key("duration", 1), "f": Key("choice", "x", choices=("x", "y")),
          "g": Key("list"), "h": Key("mac_list", always=("00:00:00:00:00:00",)),
          "i_path": Key("path"), "j": Key("endpoint"), "k": Key("cidr_list"),
          "l": Key("secret"), "m_path": Key("secret_file")},
    "t": {"a": Key("str", required=True)},
})
TOKENS = ["[", "]", "s", "t", "a", "b", "h", "j", "k", "e", "=", ":", ",", "\\", "\\:", "\\,",
          "#", ";", " ", "\t", "\n", "\r\n", "\n  ", "1", "-1", "1e999", "nan", "10m", "ms",
          "00:00:00:00:00:00", "::1/64", "tcp:80", "/x", "\x00", "\ufeff", "\u2028", "é",
          "\udcff"]


def load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.ini")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return load(path, ALL_KINDS)
        except ConfigError as exc:
            assert all("\n" not in str(error) for error in exc.errors)
            return exc


@settings(deadline=None)
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise_anything_but_config_error(data):
    assert isinstance(load_bytes(data), (Config, ConfigError))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=80))
def test_ini_shaped_noise_never_raises_anything_but_config_error(tokens):
    # surrogatepass: a lone surrogate becomes bytes that are not valid UTF-8.
    data = "".join(tokens).encode("utf-8", "surrogatepass")
    assert isinstance(load_bytes(data), (Config, ConfigError))
