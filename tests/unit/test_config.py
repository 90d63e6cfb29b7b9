"""core.config: layered INI files read into typed values, every error on one line."""

import ipaddress
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from medulla_appliance.core import config as config_module
from medulla_appliance.core import ini
from medulla_appliance.core.config import ConfigError, ConfigErrors, Key, Schema, load

DATA = pathlib.Path(__file__).parent.parent / "data" / "config"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

SCHEMA = Schema({
    "global": {"log_level": Key("choice", "INFO", choices=LEVELS, help="How much is logged.")},
    "xmpp": {
        "server": Key("str", "127.0.0.1"),
        "port": Key("int", 5222, min=1, max=65535),
        "ping_interval": Key("duration", "15s", min=1, max=3600),
        "password": Key("secret", "changeme"),
        "password_path": Key("secret_file"),
    },
    "registry": {"blacklisted_mac_addresses": Key(
        "mac_list", "00\\:00\\:00\\:00\\:00\\:00", always=("00:00:00:00:00:00",),
        help="MAC addresses shared by many machines (Fortinet...),\nnever used to identify one.")},
    "web": {
        "listen": Key("endpoint", "tcp:7080:interface=127.0.0.1"),
        "trusted": Key("cidr_list", "127.0.0.0/8, ::1"),
        "root": Key("path", "/var/lib/medulla"),
        "debug": Key("bool", False),
        "ratio": Key("float", 0.5, min=0, max=1),
        "tags": Key("list", ("a", "b,c")),
        "timeout": Key("duration", 30),
    },
})


def write(path, text, mode=None):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    if mode is not None:
        path.chmod(mode)
    return str(path)


def load_text(tmp_path, text, schema=SCHEMA):
    return load(write(tmp_path / "master.ini", text), schema)


def error_lines(path, schema=SCHEMA, **kwargs):
    with pytest.raises(ConfigErrors) as info:
        load(path, schema, **kwargs)
    return [str(e) for e in info.value.errors]


def value(tmp_path, section, key, raw):
    return load_text(tmp_path, f"[{section}]\n{key} = {raw}\n")[section][key]


def refused(tmp_path, section, key, raw):
    path = write(tmp_path / "master.ini", f"[{section}]\n{key} = {raw}\n")
    (line,) = error_lines(path)
    prefix = f"{path}:2: [{section}] {key}: "
    assert line.startswith(prefix)
    return line[len(prefix):]


# --- types -------------------------------------------------------------------------------

def test_defaults_apply_when_files_say_nothing(tmp_path):
    cfg = load_text(tmp_path, "")
    assert cfg["xmpp"]["port"] == 5222
    assert cfg.get("xmpp", "ping_interval") == 15.0
    assert cfg["registry"]["blacklisted_mac_addresses"] == ("00:00:00:00:00:00",)
    assert cfg["web"]["tags"] == ("a", "b,c")
    assert cfg["web"]["timeout"] == 30.0
    assert cfg["xmpp"]["password_path"] is None
    assert cfg.origin("xmpp", "port") == ("default", None)


@pytest.mark.parametrize("raw,expected", [("5222", 5222), ("+1", 1), ("65535", 65535)])
def test_int_accepts_decimal_integers_in_range(tmp_path, raw, expected):
    assert value(tmp_path, "xmpp", "port", raw) == expected


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "1_000", "5222.0", "٣", "0x10", ""])
def test_int_refuses_anything_else_saying_the_range(tmp_path, raw):
    assert refused(tmp_path, "xmpp", "port", raw) == \
        f"expected an integer from 1 to 65535, got '{raw}'"


@pytest.mark.parametrize("raw,expected", [("0", 0.0), ("1", 1.0), (".25", 0.25), ("5e-1", 0.5)])
def test_float_in_range(tmp_path, raw, expected):
    assert value(tmp_path, "web", "ratio", raw) == expected


@pytest.mark.parametrize("raw", ["nan", "inf", "1.5", "-0.1", "half", "1e999"])
def test_float_refuses_out_of_range_and_non_finite(tmp_path, raw):
    assert refused(tmp_path, "web", "ratio", raw) == f"expected a number from 0 to 1, got '{raw}'"


@pytest.mark.parametrize("raw,expected", [
    ("yes", True), ("YES", True), ("true", True), ("On", True), ("1", True),
    ("no", False), ("False", False), ("off", False), ("0", False),
])
def test_bool_spellings(tmp_path, raw, expected):
    assert value(tmp_path, "web", "debug", raw) is expected


def test_bool_refuses_other_words(tmp_path):
    assert refused(tmp_path, "web", "debug", "enabled") == \
        "expected yes/no, true/false, on/off or 1/0, got 'enabled'"


@pytest.mark.parametrize("raw,seconds", [
    ("500ms", 0.5), ("30s", 30.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86400.0),
    ("45", 45.0), ("1.5m", 90.0), ("10 M", 600.0), ("3600s", 3600.0),
])
def test_duration_units_give_float_seconds(tmp_path, raw, seconds):
    assert value(tmp_path, "web", "timeout", raw) == seconds


@pytest.mark.parametrize("raw", ["500ms", "2h", "0", "-5s", "5 minutes", "1w", "s"])
def test_duration_refused_outside_its_bounds_or_syntax(tmp_path, raw):
    assert refused(tmp_path, "xmpp", "ping_interval", raw) == (
        f"expected a duration like 500ms, 30s, 10m, 2h or 1d from 1s to 3600s, got '{raw}'")


def test_choice_is_case_insensitive_and_returns_the_canonical_spelling(tmp_path):
    assert value(tmp_path, "global", "log_level", "warning") == "WARNING"
    assert refused(tmp_path, "global", "log_level", "loud") == \
        "expected one of DEBUG, INFO, WARNING, ERROR, got 'loud'"


def test_list_items_are_stripped_empty_ones_dropped_escaped_commas_kept(tmp_path):
    assert value(tmp_path, "web", "tags", r" x , ,y\, z,, x ,w\\,v ") == ("x", "y, z", "w\\", "v")
    assert value(tmp_path, "web", "tags", "") == ()


def test_list_may_continue_on_indented_lines(tmp_path):
    cfg = load_text(tmp_path, "[web]\ntags = a,\n    b,\n    c\n")
    assert cfg["web"]["tags"] == ("a", "b", "c")


def test_the_faq_blacklist_line_reads_as_two_normalised_macs(tmp_path):
    # The exact line of the FAQ ("Duplicate MAC Addresses"), colons escaped as it asks.
    line = r"blacklisted_mac_addresses = 00\:00\:00\:00\:00\:00, 00\:09\:0f\:aa\:00\:01"
    cfg = load_text(tmp_path, f"[registry]\n{line}\n")
    assert cfg["registry"]["blacklisted_mac_addresses"] == (
        "00:00:00:00:00:00", "00:09:0f:aa:00:01")


def test_the_faq_sample_file_as_a_local_override():
    schema = Schema({"parameters": {"blacklisted_mac_addresses": Key(
        "mac_list", always=("00:00:00:00:00:00",))}})
    cfg = load(DATA / "registeryagent.ini", schema, required=False)
    assert cfg.files == [str(DATA / "registeryagent.ini.local")]
    assert cfg["parameters"]["blacklisted_mac_addresses"] == (
        "00:00:00:00:00:00", "00:09:0f:aa:00:01")
    assert cfg.origin("parameters", "blacklisted_mac_addresses") == (
        str(DATA / "registeryagent.ini.local"), 3)


def test_mac_list_normalises_case_and_dashes_and_keeps_the_zero_mac(tmp_path):
    # 00:00:00:00:00:00 must always be blacklisted, even when the admin forgets it.
    raw = "00-09-0F-AA-00-01, 00:09:0f:aa:00:01, AA:BB:CC:DD:EE:FF"
    assert value(tmp_path, "registry", "blacklisted_mac_addresses", raw) == (
        "00:00:00:00:00:00", "00:09:0f:aa:00:01", "aa:bb:cc:dd:ee:ff")


@pytest.mark.parametrize("item", ["00:09:0f:aa:00", "gg:00:00:00:00:00", "0009.0faa.0001",
                                  "00:09:0f:aa:00:01:02"])
def test_mac_list_names_the_bad_item(tmp_path, item):
    raw = f"00:00:00:00:00:01, {item}"
    assert refused(tmp_path, "registry", "blacklisted_mac_addresses", raw) == \
        f"item 2: invalid MAC address '{item}', expected like aa:bb:cc:dd:ee:ff"


def test_path_must_be_absolute(tmp_path):
    assert value(tmp_path, "web", "root", r"/srv/a\,b") == "/srv/a,b"
    assert refused(tmp_path, "web", "root", "srv") == "expected an absolute path, got 'srv'"


@pytest.mark.parametrize("raw", ["tcp:7080:interface=127.0.0.1", "ssl:443:privateKey=/k.pem",
                                 "unix:/run/medulla.sock", "udp:69", "systemd:domain=INET:index=0",
                                 r"tcp6:9990:interface=\:\:1"])
def test_endpoint_strings_pass_through_unchanged(tmp_path, raw):
    # Unchanged, backslashes included: Twisted's parser needs its own escapes (IPv6).
    assert value(tmp_path, "web", "listen", raw) == raw


@pytest.mark.parametrize("raw", ["http://x", "tcp", "tcp:", "7080", "TCP:7080", ""])
def test_endpoint_needs_a_known_prefix(tmp_path, raw):
    assert refused(tmp_path, "web", "listen", raw).startswith(
        "expected a Twisted endpoint starting with tcp:, tcp6:, ssl:, unix:, udp:, systemd: ")


def test_cidr_list_accepts_hosts_bits_and_ipv6(tmp_path):
    got = value(tmp_path, "web", "trusted", r"10.1.2.3/8, fd00\:\:/8, 192.168.1.7")
    assert got == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"),
                   ipaddress.ip_network("192.168.1.7/32"))


def test_escapes_in_plain_values(tmp_path):
    assert value(tmp_path, "xmpp", "server", r"a\:b\,c\\d\e\\") == "a:b,c\\d\\e\\"


def test_key_value_with_colon_and_first_delimiter_wins(tmp_path):
    cfg = load_text(tmp_path, "[xmpp]\nserver: a=b\n[web]\nlisten = tcp:1:interface=::1\n")
    assert cfg["xmpp"]["server"] == "a=b"
    assert cfg["web"]["listen"] == "tcp:1:interface=::1"


def test_key_names_are_case_insensitive_like_configparser(tmp_path):
    assert load_text(tmp_path, "[xmpp]\nPort = 5223\n")["xmpp"]["port"] == 5223


def test_continuation_lines_join_with_newlines_until_a_blank_line(tmp_path):
    cfg = load_text(tmp_path, "[xmpp]\n  server = a\n\tb\n# note\n   c\n\n  port = 1\n")
    assert cfg["xmpp"]["server"] == "a\nb\nc"
    assert cfg["xmpp"]["port"] == 1


# --- secrets -----------------------------------------------------------------------------

def test_secrets_never_show_in_repr_str_or_as_dict(tmp_path):
    cfg = load_text(tmp_path, "[xmpp]\npassword = hunter2\n")
    assert cfg["xmpp"]["password"] == "hunter2"
    for text in (repr(cfg), str(cfg), repr(cfg["xmpp"]), str(cfg.as_dict())):
        assert "hunter2" not in text
    assert cfg.as_dict()["xmpp"]["password"] == "***"


def test_a_mistyped_secret_line_is_reported_without_its_content(tmp_path):
    path = write(tmp_path / "master.ini", "[xmpp]\npassword hunter2\n")
    (line,) = error_lines(path)
    assert line == f"{path}:2: expected '[section]', 'key = value' or a '#' comment"


def test_read_secret_reads_an_owner_only_file(tmp_path):
    secret = write(tmp_path / "xmpp.secret", "s3cret\n", mode=0o600)
    cfg = load_text(tmp_path, f"[xmpp]\npassword_path = {secret}\n")
    assert cfg.read_secret("xmpp", "password_path") == "s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620])
def test_read_secret_refuses_a_file_others_can_access(tmp_path, mode):
    secret = write(tmp_path / "xmpp.secret", "s3cret", mode=mode)
    path = write(tmp_path / "master.ini", f"[xmpp]\n\npassword_path = {secret}\n")
    with pytest.raises(ConfigError) as info:
        load(path, SCHEMA).read_secret("xmpp", "password_path")
    assert str(info.value) == (f"{path}:3: [xmpp] password_path: secret file '{secret}' has "
                               f"mode {mode:04o}; only its owner may access it (chmod 600)")
    assert "s3cret" not in str(info.value)


def test_read_secret_names_a_missing_or_empty_file(tmp_path):
    missing = str(tmp_path / "nope")
    cfg = load_text(tmp_path, f"[xmpp]\npassword_path = {missing}\n")
    with pytest.raises(ConfigError, match=f"cannot read secret file '{missing}': No such file"):
        cfg.read_secret("xmpp", "password_path")
    write(missing, "  \n", mode=0o600)
    with pytest.raises(ConfigError, match="is empty"):
        cfg.read_secret("xmpp", "password_path")


def test_read_secret_without_a_configured_file(tmp_path):
    path = write(tmp_path / "master.ini", "")
    with pytest.raises(ConfigError) as info:
        load(path, SCHEMA).read_secret("xmpp", "password_path")
    assert str(info.value) == f"{path}: [xmpp] password_path: no secret file configured"


# --- layering and origins ----------------------------------------------------------------

def test_override_order_ini_then_local_then_dropins_by_name(tmp_path):
    main = write(tmp_path / "master.ini", "[xmpp]\nserver = a\nport = 1\nping_interval = 1m\n")
    write(tmp_path / "master.ini.local", "[xmpp]\n\nport = 2\nserver = b\n")
    write(tmp_path / "master.d/20-late.ini", "[xmpp]\nport = 4\n")
    write(tmp_path / "master.d/10-early.ini", "[xmpp]\nport = 3\nserver = c\n")
    write(tmp_path / "master.d/30-ignored.ini.dpkg-dist", "[xmpp]\nport = 9\n")
    write(tmp_path / "master.d/.hidden.ini", "[xmpp]\nport = 9\n")
    cfg = load(main, SCHEMA)
    assert (cfg["xmpp"]["server"], cfg["xmpp"]["port"], cfg["xmpp"]["ping_interval"]) == \
        ("c", 4, 60.0)
    assert cfg.files == [main, main + ".local", str(tmp_path / "master.d/10-early.ini"),
                         str(tmp_path / "master.d/20-late.ini")]
    assert cfg.origin("xmpp", "port") == (str(tmp_path / "master.d/20-late.ini"), 2)
    assert cfg.origin("xmpp", "server") == (str(tmp_path / "master.d/10-early.ini"), 3)
    assert cfg.origin("xmpp", "ping_interval") == (main, 4)
    assert cfg.origin("global", "log_level") == ("default", None)


def test_local_overrides_key_by_key_not_whole_sections(tmp_path):
    main = write(tmp_path / "master.ini", "[xmpp]\nserver = a\nport = 1\n")
    write(tmp_path / "master.ini.local", "[xmpp]\nport = 2\n")
    cfg = load(main, SCHEMA)
    assert (cfg["xmpp"]["server"], cfg["xmpp"]["port"]) == ("a", 2)


def test_missing_main_file_is_an_error_unless_not_required(tmp_path):
    main = str(tmp_path / "master.ini")
    assert error_lines(main) == [f"{main}: file not found"]
    cfg = load(main, SCHEMA, required=False)
    assert cfg.files == [] and cfg["xmpp"]["port"] == 5222


def test_a_required_key_must_be_set_somewhere(tmp_path):
    schema = Schema({"db": {"name": Key("str", required=True)}})
    main = write(tmp_path / "master.ini", "[db]\n")
    assert error_lines(main, schema) == [
        f"{main}: [db] name: required key is missing; set it in {main}.local"]
    write(main + ".local", "[db]\nname = medulla\n")
    assert load(main, schema)["db"]["name"] == "medulla"


def test_config_get_and_origin_refuse_undeclared_keys(tmp_path):
    cfg = load_text(tmp_path, "")
    with pytest.raises(KeyError):
        cfg.get("xmpp", "nope")
    with pytest.raises(KeyError):
        cfg.origin("nope", "port")
    assert "xmpp" in cfg and list(cfg) == list(SCHEMA.sections)


# --- errors ------------------------------------------------------------------------------

def corpus_expectations(path):
    """``{line: message}`` from the ``# expect:`` comments of an annotated sample file."""
    expected, pending = {}, None
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("# expect: "):
            pending = stripped[len("# expect: "):]
        elif stripped and not stripped.startswith(("#", ";")) and pending is not None:
            expected[number], pending = pending, None
    return expected


def test_error_corpus_gives_exactly_the_annotated_errors():
    path = str(DATA / "errors.ini")
    expected = corpus_expectations(path)
    assert len(expected) == 16
    got = error_lines(path)
    assert got == [f"{path}:{line}: {message}" for line, message in sorted(expected.items())]


def test_all_errors_of_all_files_come_at_once_counted_on_the_first_line(tmp_path):
    main = write(tmp_path / "master.ini", "[xmpp]\nport = abc\n")
    write(tmp_path / "master.ini.local", "[xmpp]\nprot = 1\n")
    write(tmp_path / "master.d/50-x.ini", "[web]\ndebug = maybe\nratio = 2\n")
    with pytest.raises(ConfigErrors) as info:
        load(main, SCHEMA)
    dropin = tmp_path / "master.d/50-x.ini"
    assert str(info.value).splitlines() == [
        "4 configuration errors:",
        f"{main}:2: [xmpp] port: expected an integer from 1 to 65535, got 'abc'",
        f"{main}.local:2: [xmpp] prot: unknown key; did you mean 'port'?",
        f"{dropin}:2: [web] debug: expected yes/no, true/false, on/off or 1/0, got 'maybe'",
        f"{dropin}:3: [web] ratio: expected a number from 0 to 1, got '2'",
    ]
    assert isinstance(info.value, ConfigError)
    assert (info.value.file, info.value.line, info.value.key) == (main, 2, "port")


def test_one_error_is_still_a_counted_list(tmp_path):
    main = write(tmp_path / "master.ini", "[xmpp]\nport = 0\n")
    with pytest.raises(ConfigErrors) as info:
        load(main, SCHEMA)
    assert str(info.value) == (
        f"1 configuration error:\n{main}:2: [xmpp] port: expected an integer from 1 to 65535, "
        "got '0'")


def test_an_error_is_one_line_even_with_newlines_inside():
    err = ConfigError("/etc/x\n.ini", 3, "a", "b", "bad\nthing")
    assert str(err) == "/etc/x .ini:3: [a] b: bad thing"
    assert err.errors == [err]


def test_errors_survive_pickling_for_the_process_that_reports_them():
    errors = ConfigErrors([ConfigError("/a.ini", 1, "s", "k", "m"), ConfigError("/b", None, None,
                                                                                None, "n")])
    copy = pickle.loads(pickle.dumps(errors))
    assert str(copy) == str(errors) == "2 configuration errors:\n/a.ini:1: [s] k: m\n/b: n"


def test_unknown_names_without_a_close_match_get_no_suggestion(tmp_path):
    path = write(tmp_path / "master.ini", "[zzz]\n[xmpp]\nqqqqqqqq = 1\n")
    assert error_lines(path) == [f"{path}:1: [zzz] unknown section",
                                 f"{path}:3: [xmpp] qqqqqqqq: unknown key"]


def test_section_names_keep_their_case_but_the_suggestion_helps(tmp_path):
    path = write(tmp_path / "master.ini", "[XMPP]\nport = 1\n")
    assert error_lines(path) == [f"{path}:1: [XMPP] unknown section; did you mean 'xmpp'?"]


def test_duplicate_section_headers_merge(tmp_path):
    cfg = load_text(tmp_path, "[xmpp]\nport = 1\n[web]\n[xmpp]\nserver = b\n")
    assert (cfg["xmpp"]["port"], cfg["xmpp"]["server"]) == (1, "b")


def test_same_key_in_two_files_is_an_override_not_a_duplicate(tmp_path):
    main = write(tmp_path / "master.ini", "[xmpp]\nport = 1\n")
    write(main + ".local", "[xmpp]\nport = 2\n")
    assert load(main, SCHEMA)["xmpp"]["port"] == 2


def test_non_utf8_bytes_name_their_line(tmp_path):
    path = write(tmp_path / "master.ini", b"[xmpp]\nserver = caf\xe9\n")
    assert error_lines(path) == [f"{path}:2: invalid UTF-8 byte 0xe9; save the file as UTF-8"]


def test_a_nul_byte_names_its_line(tmp_path):
    path = write(tmp_path / "master.ini", b"[xmpp]\n\nport = 1\x00\n")
    assert error_lines(path) == [f"{path}:3: NUL byte: this is not a text file"]


def test_a_bom_and_crlf_line_ends_are_accepted(tmp_path):
    cfg = load_text(tmp_path, "\ufeff[xmpp]\r\nport = 7\r\nserver = a\r\n  b\r\n")
    assert (cfg["xmpp"]["port"], cfg["xmpp"]["server"]) == (7, "a\nb")


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = write(tmp_path / "master.ini", "[xmpp]\n")
    real_open = os.open

    def denied(name, *args, **kwargs):
        if name == path:
            raise PermissionError(13, "Permission denied", name)
        return real_open(name, *args, **kwargs)

    # Tests run as root here, where chmod 000 would not stop the read.
    monkeypatch.setattr(ini.os, "open", denied)
    assert error_lines(path) == [f"{path}: cannot read: Permission denied"]


def test_unreadable_local_file_is_named_for_real():
    # Root reads any file, so the check runs as `nobody` (through setpriv) when we are root;
    # the folder lives outside pytest's 0700 tmp so that nobody can reach it.
    folder = tempfile.mkdtemp(prefix="medulla-config-")
    try:
        os.chmod(folder, 0o755)
        main = write(pathlib.Path(folder) / "master.ini", "", mode=0o644)
        write(main + ".local", "", mode=0)
        code = ("import sys; sys.path.insert(0, %r); "
                "from tests.unit.test_config import error_lines; print(error_lines(%r))"
                % (str(pathlib.Path(__file__).resolve().parents[2]), main))
        argv = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                    *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == repr([f"{main}.local: cannot read: Permission denied"]), (
            out.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_directory_or_fifo_instead_of_a_file(tmp_path):
    main = str(tmp_path / "master.ini")
    os.mkdir(main)
    os.mkfifo(main + ".local")
    assert error_lines(main) == [f"{main}: not a regular file",
                                 f"{main}.local: not a regular file"]


def test_a_dropin_folder_that_is_a_file(tmp_path):
    main = write(tmp_path / "master.ini", "")
    write(tmp_path / "master.d", "")
    assert error_lines(main) == [f"{tmp_path / 'master.d'}: cannot list: Not a directory"]


# --- hostile files -----------------------------------------------------------------------

def test_binary_garbage_fails_cleanly(tmp_path):
    path = write(tmp_path / "master.ini", bytes(range(256)) * 64 + os.urandom(4096))
    assert len(error_lines(path)) == 1


def test_ten_megabytes_of_junk_fail_fast_and_cleanly(tmp_path):
    path = write(tmp_path / "master.ini", b"junk line without delimiter\n" * 400_000)
    start = time.monotonic()
    assert error_lines(path) == [f"{path}: larger than 1048576 bytes; not a configuration file"]
    assert time.monotonic() - start < 1.0


def test_junk_just_under_the_size_limit_stops_after_a_few_errors(tmp_path):
    path = write(tmp_path / "master.ini", b"[xmpp]\n" + b"junk\n" * 200_000)
    start = time.monotonic()
    lines = error_lines(path)
    assert time.monotonic() - start < 1.0
    assert len(lines) == ini.MAX_ERRORS_PER_FILE + 1
    assert lines[-1] == f"{path}:{ini.MAX_ERRORS_PER_FILE + 2}: too many errors, stopped reading " \
        "this file"


# --- schema ------------------------------------------------------------------------------

@pytest.mark.parametrize("build,message", [
    (lambda: Key("number"), "unknown key kind 'number'"),
    (lambda: Key("str", min=1), "min/max apply to"),
    (lambda: Key("choice", "a"), "a choice key needs choices"),
    (lambda: Key("str", always=("x",)), "always applies to"),
    (lambda: Key("int", 1, required=True), "a required key has no default"),
    (lambda: Schema({"s": {"port": Key("int", 0, min=1)}}), r"\[s\] port: bad default"),
    (lambda: Schema({"s": {"cert_path": Key("str")}}), "a \\*_path key is a path"),
    (lambda: Schema({"s": {"Port": Key("int")}}), "key names are lower case"),
])
def test_schema_mistakes_fail_at_import_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_defaults_ini_documents_every_key_and_loads_back_to_the_defaults(tmp_path):
    text = SCHEMA.defaults_ini()
    assert "# How much is logged.\n# choice; one of DEBUG, INFO, WARNING, ERROR\n" \
        "#log_level = INFO\n" in text
    assert "# int from 1 to 65535\n#port = 5222\n" in text
    assert "#password =\n" in text and "changeme" not in text
    assert "# never used to identify one.\n" in text
    for name, keys in SCHEMA.sections.items():
        assert f"[{name}]" in text
        assert all(f"#{key} =" in text for key in keys)
    as_is = load_text(tmp_path, text).as_dict()
    assert as_is == load_text(tmp_path, "").as_dict()
    # Uncommented, every default must read back as itself.
    uncommented = re.sub(r"(?m)^#(?=[a-z_]+ =)", "", text)
    cfg = load_text(tmp_path, uncommented)
    defaults = load_text(tmp_path, "")
    for section, keys in SCHEMA.sections.items():
        for key in keys:
            if key not in ("password", "password_path"):
                assert cfg[section][key] == defaults[section][key], (section, key)
    assert cfg.origin("xmpp", "port")[1] is not None


def test_config_module_exports_its_public_api():
    assert set(config_module.__all__) == {"Config", "ConfigError", "ConfigErrors", "Key",
                                          "Schema", "load"}
    assert config_module.ConfigError is ini.ConfigError


def test_an_empty_value_unsets_an_optional_key_without_default(tmp_path):
    main = write(tmp_path / "master.ini", "[xmpp]\npassword_path = /etc/medulla/xmpp.secret\n")
    write(main + ".local", "[xmpp]\npassword_path =\n")
    assert load(main, SCHEMA)["xmpp"]["password_path"] is None
    # A key with a default keeps needing a real value: None would surprise its daemon.
    assert refused(tmp_path, "web", "root", "") == "expected an absolute path, got ''"


def test_thousands_of_unknown_sections_are_cut_short_fast(tmp_path):
    path = write(tmp_path / "master.ini", "".join(f"[junk{i}]\n" for i in range(50_000)))
    start = time.monotonic()
    lines = error_lines(path)
    assert time.monotonic() - start < 1.0
    assert len(lines) == ini.MAX_ERRORS_PER_FILE + 1
    assert lines[0] == f"{path}:1: [junk0] unknown section"
    assert lines[-1] == f"{path}: too many errors, stopped checking this file"


def test_a_nul_in_the_path_is_a_config_error_too():
    with pytest.raises(ConfigErrors, match="embedded null byte"):
        load("/etc/medulla/mas\x00ter.ini", SCHEMA)
