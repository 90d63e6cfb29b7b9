"""`medullactl relays` and `relay show|reset-key`: parsing and rendering (hostile text from
a relay is escaped)."""

from medulla_appliance.ctl.__main__ import build_parser
from medulla_appliance.ctl.relay_commands import render_relay, render_relays

NOW = 1_763_820_000.0
LYON = {"name": "lyon", "jid": "relay-lyon@medulla.test", "enrolled": True, "online": True,
        "key_fingerprint": "SHA256:abc", "last_seen": NOW - 5, "enrolled_at": NOW - 3600,
        "version": "0.1.0", "package_url": "http://lyon:9990", "status_interval": 60,
        "daemons": {"medulla-relay": {"version": "0.1.0", "resource": "relay\x1b[2J",
                                      "registered_at": NOW - 60}},
        "status": {"load": {"active_downloads": 3}, "packages_complete": 7},
        "packages": [{"package_id": "hello", "descriptor_sha256": "a" * 64, "ts": NOW}]}


def test_the_commands_parse():
    parser = build_parser({})
    assert parser.parse_args(["relays"]).run.__name__ == "_list"
    args = parser.parse_args(["relay", "reset-key", "lyon"])
    assert (args.action, args.name, args.run.__name__) == ("reset-key", "lyon", "_reset_key")
    assert parser.parse_args(["relay", "show", "lyon", "--json"]).json is True


def test_the_table_counts_and_escapes():
    reset = dict(LYON, name="paris", enrolled=False, online=False, key_fingerprint="")
    text = render_relays([LYON, reset], NOW)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "LAST"]
    assert lines[1].startswith("lyon") and "online" in lines[1] and "medulla-relay" in lines[1]
    assert "key reset" in lines[2]
    assert lines[-1] == "2 relays, 1 online"
    assert render_relays([], NOW) == "0 relays, 0 online"


def test_show_lists_daemons_load_and_packages_escaped():
    text = render_relay(LYON, NOW)
    lines = {" ".join(line.split()) for line in text.splitlines()}
    assert "load active_downloads: 3" in lines and "packages complete: 7" in lines
    assert "relay\\x1b[2J" in text and "\x1b" not in text
    assert "hello" in text and "a" * 64 in text
