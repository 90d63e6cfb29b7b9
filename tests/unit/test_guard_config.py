"""guard.ini, and the jail and filter files: the shipped ones load, and every mistake is
reported with its file, line, section and key."""

import pathlib

import pytest

from medulla_appliance.core import config as core_config
from medulla_appliance.guard.__main__ import main
from medulla_appliance.guard.config import SCHEMA, load_rules

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "guard.d"
SSHD_FILTER = (RULES / "filters" / "sshd.ini").read_text()


def test_shipped_rules_load_with_the_seeds_defaults():
    jails = {j.name: j for j in load_rules(str(RULES))}
    assert set(jails) == {"sshd", "prosody", "ejabberd", "medulla-master", "medulla-pxe"}
    sshd = jails["sshd"]
    assert (sshd.maxretry, sshd.findtime, sshd.bantime) == (5, 600, 600)
    assert sshd.sources == ("journal",) and sshd.filter.journalmatch == ("SYSLOG_IDENTIFIER=sshd",)


def test_guard_ini_defaults_always_allow_loopback():
    allow = [str(n) for n in SCHEMA.defaults["guard"]["allowlist"]]
    assert "127.0.0.0/8" in allow and "::1/128" in allow
    assert SCHEMA.defaults["guard"]["backend"] == "nftables"


def rules(tmp_path, jail, filter_text=SSHD_FILTER, local=None):
    (tmp_path / "filters").mkdir(exist_ok=True)
    (tmp_path / "jails").mkdir(exist_ok=True)
    (tmp_path / "filters" / "sshd.ini").write_text(filter_text)
    (tmp_path / "jails" / "sshd.ini").write_text(jail)
    if local is not None:
        (tmp_path / "jails" / "sshd.ini.local").write_text(local)
    return str(tmp_path)


def errors_of(path):
    with pytest.raises(core_config.ConfigError) as err:
        load_rules(path)
    return str(err.value)


def test_local_file_overrides_key_by_key(tmp_path):
    path = rules(tmp_path, "[jail]\nsources = journal\nbantime = 10m\n",
                 local="[jail]\nbantime = 1h\nallowlist = 198.51.100.0/24\n")
    [jail] = load_rules(path)
    assert jail.bantime == 3600 and jail.sources == ("journal",)
    assert [str(n) for n in jail.allowlist] == ["198.51.100.0/24"]


def test_disabled_jails_are_not_loaded(tmp_path):
    assert load_rules(rules(tmp_path, "[jail]\nenabled = no\n")) == []


@pytest.mark.parametrize("jail, expected", [
    ("[jail]\nsources = journal\nmaxretry = 0\n",
     "sshd.ini:3: [jail] maxretry: expected an integer"),
    ("[jail]\nsources = journal\nbantme = 1h\n", "sshd.ini:3: [jail] bantme: unknown key"),
    ("[jail]\nsources = /var/log/auth.log\n", "sshd.ini:2: [jail] sources: expected file:"),
    ("[jail]\n", "[jail] sources: an enabled jail needs at least one source"),
    ("[jail]\nsources = journal\nfilter = nope\n", "sshd.ini:3: [jail] filter: no filter 'nope'"),
    ("[jails]\nsources = journal\n", "sshd.ini:1: [jails] unknown section"),
])
def test_jail_mistakes_name_file_line_section_and_key(tmp_path, jail, expected):
    assert expected in errors_of(rules(tmp_path, jail))


@pytest.mark.parametrize("filter_text, expected", [
    ("[filter]\ndaemon = sshd\nfailregex = Invalid user .* from <HOST>\n",
     "sshd.ini:3: [filter] failregex: pattern 1: a pattern must be anchored"),
    ("[filter]\ndaemon = sshd\nfailregex =\n    ^ok <HOST>$\n    ^bad ( <HOST>$\n",
     "sshd.ini:3: [filter] failregex: pattern 2: not a valid regular expression"),
    ("[filter]\ndaemon = sshd\n", "[filter] failregex: required key is missing"),
    ("[filter]\nfailregex = ^x <HOST>$\n", "[filter] daemon: the prefix names <DAEMON>"),
    ("[filter]\ndaemon = sshd\njournalmatch = sshd\nfailregex = ^x <HOST>$\n",
     "sshd.ini:3: [filter] journalmatch: expected FIELD=VALUE"),
])
def test_filter_mistakes_name_file_line_section_and_key(tmp_path, filter_text, expected):
    assert expected in errors_of(rules(tmp_path, "[jail]\nsources = journal\n", filter_text))


def test_check_config_checks_the_rules_too(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    path = rules(tmp_path / "r", "[jail]\nsources = journal\nmaxretry = x\n")
    ini = tmp_path / "guard.ini"
    ini.write_text("[guard]\nrules_dir = %s\n" % path)
    assert main(["--config", str(ini), "--check-config"]) == 78
    assert "maxretry" in capsys.readouterr().err
    (pathlib.Path(path) / "jails" / "sshd.ini").write_text("[jail]\nsources = journal\n")
    assert main(["--config", str(ini), "--check-config"]) == 0
    assert "jails: sshd" in capsys.readouterr().out
