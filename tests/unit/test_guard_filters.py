"""Every shipped filter against its annotated sample log (tests/data/guard/NAME.log).

Annotations: ``#> ADDR`` (the next line is one failure from ADDR), ``#> -`` (it is none),
``#= file`` / ``#= journal IDENT`` (how the following lines are read). Every line must be
annotated, and every filter must have a sample file, or the suite fails.
"""

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medulla_appliance.guard.config import load_filter
from medulla_appliance.guard.filters import Filter, FilterError, normalise_address

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILTERS = ROOT / "etc" / "guard.d" / "filters"
SAMPLES = ROOT / "tests" / "data" / "guard"
NAMES = sorted(p.stem for p in FILTERS.glob("*.ini"))


def samples(name):
    """[(line number, mode, identifier, text, expected address or None)]."""
    cases, expected, mode, ident = [], "unset", "file", None
    for number, raw in enumerate((SAMPLES / f"{name}.log").read_text().split("\n"), 1):
        if raw.startswith("#= "):
            words = raw[3:].split()
            mode, ident = words[0], (words[1] if len(words) > 1 else None)
        elif raw.startswith("#> "):
            word = raw[3:].split()[0]
            expected = None if word == "-" else word
        elif raw.startswith("#") or not raw.strip():
            continue
        else:
            assert expected != "unset", f"{name}.log:{number}: line without a '#>' annotation"
            cases.append((number, mode, ident, raw, expected))
            expected = "unset"
    return cases


def test_every_filter_has_a_sample_file():
    assert NAMES, "no filter found under etc/guard.d/filters"
    missing = [n for n in NAMES if not (SAMPLES / f"{n}.log").exists()]
    assert not missing, f"filters without tests/data/guard/NAME.log: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_filter_finds_exactly_the_annotated_failures(name):
    flt = load_filter(name, str(FILTERS / f"{name}.ini"))
    cases = samples(name)
    assert len(cases) >= 5, f"{name}.log has too few samples"
    wrong = []
    for number, mode, ident, text, expected in cases:
        hit = flt.match_line(text) if mode == "file" else flt.match_message(text, ident)
        got = hit.host if hit else None
        if got != expected:
            wrong.append(f"{name}.log:{number}: expected {expected}, got {got}: {text[:100]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", NAMES)
def test_scan_agrees_with_match_line(name):
    flt = load_filter(name, str(FILTERS / f"{name}.ini"))
    lines = [text for _, mode, _, text, _ in samples(name) if mode == "file"]
    expected = [(m.host, line) for line in lines if (m := flt.match_line(line))]
    assert [(m.host, line) for m, line in flt.scan(lines)] == expected


@pytest.mark.parametrize("name", NAMES)
def test_samples_cover_ipv6_and_refusals(name):
    expected = [e for *_, e in samples(name)]
    assert any(e and ":" in e for e in expected), f"{name}.log: no IPv6 failure"
    assert None in expected, f"{name}.log: no line that must not match"


def test_sshd_samples_cover_every_failure_kind_of_the_seeds():
    text = (SAMPLES / "sshd.log").read_text()
    for wording in ("Invalid user", "Failed password", "Authentication failure",
                    "Failed publickey", "maximum authentication attempts exceeded",
                    "Connection closed by authenticating user", "Disconnected from invalid user",
                    "authentication failure; logname"):
        assert wording in text


@pytest.mark.parametrize("pattern", [
    "Invalid user .* from <HOST>",              # not anchored
    "^Invalid user .* from <HOST>",             # not anchored at the end
    "^Invalid user .* from .*$",                # no host
    "^Invalid user <HOST> from <HOST>$",        # two hosts
    "^Invalid user (.* from <HOST>$",           # not a regex
])
def test_unsafe_or_broken_patterns_are_refused(pattern):
    with pytest.raises(FilterError):
        Filter("x", [pattern], daemons=["sshd"])


def test_named_groups_of_several_patterns_do_not_clash():
    flt = Filter("x", [r"^a (?P<user>\S+) from <HOST>$", r"^b (?P<user>\S+) (?P=user) <HOST>$"],
                 daemons=["d"])
    assert flt.match_line("b u u 192.0.2.1") == (("192.0.2.1", 1))
    assert flt.match_line("a u from 192.0.2.2").host == "192.0.2.2"


def test_ignoreregex_wins_over_failregex():
    flt = Filter("x", [r"^fail from <HOST>$"], ignoreregex=[r"^fail from 192\.0\.2\.9$"],
                 daemons=["d"])
    assert flt.match_line("fail from 192.0.2.9") is None
    assert flt.match_line("fail from 192.0.2.8").host == "192.0.2.8"


def test_overlong_lines_are_cut_not_matched_past_the_limit():
    flt = Filter("x", [r"^fail .* from <HOST>$"], daemons=["d"])
    assert flt.match_line("fail " + "a" * 20000 + " from 192.0.2.1") is None


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
               max_size=120))
def test_no_user_name_can_move_the_address(user):
    flt = load_filter("sshd", str(FILTERS / "sshd.ini"))
    for line in (f"Invalid user {user} from 192.0.2.99 port 2222",
                 f"Failed password for invalid user {user} from 192.0.2.99 port 2222 ssh2"):
        hit = flt.match_line(line)
        assert hit is None or hit.host == "192.0.2.99", (line, hit)


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.1", "192.0.2.1"), ("::ffff:192.0.2.1", "192.0.2.1"),
    ("2001:0DB8::0001", "2001:db8::1"), ("300.1.1.1", None), ("::g", None), ("", None)])
def test_addresses_are_normalised(text, expected):
    assert normalise_address(text) == expected
