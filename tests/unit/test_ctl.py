"""medullactl: pure rendering, then main() against a tiny real HTTP server."""

import datetime
import http.server
import json
import os
import socket
import threading
import time

import pytest

from medulla_appliance.ctl import render
from medulla_appliance.ctl.__main__ import main

UTC = datetime.timezone.utc
NOW = 1763892060.0  # 2025-11-23 10:01:00 UTC
TOKEN = "ctl-test-token-7Yq"


def machine(hostname, uuid, online=True, last_seen=NOW - 12, **extra):
    m = {"uuid": uuid, "hostname": hostname, "jid": f"{hostname}.k3x@medulla.test/5254",
         "macs": ["52:54:00:aa:bb:cc"], "ips": ["192.0.2.10"],
         "os": "Debian GNU/Linux 12 (bookworm)", "agent_version": "0.1.0",
         "inventory_tag": "", "relay": "master", "online": online, "last_seen": last_seen,
         "enrolled_at": NOW - 86400 * 3, "key_fingerprint": "SHA256:abc"}
    m.update(extra)
    return m


# -- render: pure functions ------------------------------------------------------------

def test_table_columns_are_as_wide_as_their_widest_cell():
    table = render.render_table(("A", "LONG HEADER", "C"), [("xxxxx", "y", None),
                                                             ("z", "yy", "last")])
    assert table.splitlines() == ["A      LONG HEADER  C",
                                  "xxxxx  y            -",
                                  "z      yy           last"]


def test_wide_characters_count_double_for_alignment():
    table = render.render_table(("NAME", "X"), [("端末", "1"), ("ab", "2")])
    first, second, third = table.splitlines()
    assert first.index("X") == render.display_width(second[:second.index("1")])
    assert third.index("2") == first.index("X")


@pytest.mark.parametrize("hostile,shown", [
    ("\x1b[2Jws", "\\x1b[2Jws"), ("a\rb\nc", "a\\x0db\\x0ac"),
    ("x\u202ecod.exe", "x\\u202ecod.exe"), ("\x9b31m", "\\x9b31m"),
    ("é-poste", "é-poste")])
def test_control_characters_from_machines_are_escaped(hostile, shown):
    assert render.escape_text(hostile) == shown
    out = render.render_machines([machine(hostile, "m-1")], NOW)
    assert shown in out
    assert not any(not c.isprintable() for c in out.replace("\n", ""))


def test_hostile_hostname_cannot_clear_the_screen_in_show_or_history():
    m = machine("\x1b[2J", "m-1", history=[{"ts": NOW, "event": "renamed\x1b]0;pwn\x07",
                                            "detail": "\x1b[2J"}])
    out = render.render_machine(m, NOW, UTC)
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out


@pytest.mark.parametrize("ts,expected", [
    (NOW - 12, "12s ago"), (NOW - 59.9, "59s ago"), (NOW - 180, "3m ago"),
    (NOW - 3 * 3600 - 5, "3h ago"), (NOW - 2, "2s ago"), (NOW, "just now"),
    (NOW + 3, "just now"), (NOW - 86400 * 2, "2025-11-21 10:01"),
    (NOW + 86400, "2025-11-24 10:01"), (None, "never"), ("soon", "?")])
def test_ago_formatting_with_an_injected_now(ts, expected):
    assert render.format_ago(ts, NOW, UTC) == expected


def test_machine_table_sorted_with_count_line():
    out = render.render_machines([machine("ws-02", "m-2", online=False, last_seen=NOW - 180,
                                          ips=["192.0.2.11", "10.0.0.2"]),
                                  machine("WS-01", "m-1"), machine("ws-03", "m-3")], NOW, UTC)
    lines = out.splitlines()
    assert lines[0].split() == ["HOSTNAME", "STATE", "LAST", "SEEN", "IP", "OS", "AGENT", "UUID"]
    assert [line.split()[0] for line in lines[1:4]] == ["WS-01", "ws-02", "ws-03"]
    assert "offline  3m ago     192.0.2.11 (+1)" in lines[2]
    assert lines[-1] == "3 machines, 2 online"
    assert render.render_machines([machine("a", "m")], NOW).endswith("1 machine, 1 online")
    assert render.render_machines([], NOW) == "0 machines, 0 online"


def test_machine_details_then_history():
    m = machine("ws-01", "m-1", color="blue",
                history=[{"ts": NOW - 60, "event": "online", "detail": "from 192.0.2.10"},
                         {"ts": NOW - 86400, "event": "registered", "detail": ""}])
    lines = render.render_machine(m, NOW, UTC).splitlines()
    assert lines[0] == "hostname:        ws-01"
    assert "state:           online" in lines
    assert "inventory tag:   -" in lines
    assert "last seen:       12s ago (2025-11-23 10:00)" in lines
    assert "color:           blue" in lines  # fields from a newer master still show
    at = lines.index("HISTORY")
    assert lines[at + 1].split() == ["WHEN", "EVENT", "DETAIL"]
    assert lines[at + 2] == "2025-11-23 10:00  online      from 192.0.2.10"
    assert lines[at + 3] == "2025-11-22 10:01  registered  -"


def test_status_summary_uses_the_server_clock_for_uptime():
    out = render.render_status({"version": "0.1.0", "xmpp": {"connected": True, "jid": "m@x/m"},
                                "machines": {"total": 3, "online": 2, "offline": 1},
                                "started_at": NOW - 7980, "server_time": NOW}, NOW + 999, UTC)
    assert out.splitlines() == ["medulla-master 0.1.0, up 2h 13m (since 2025-11-23 07:48)",
                                "xmpp:     connected as m@x/m",
                                "machines: 3 total, 2 online, 1 offline"]
    assert "NOT connected" in render.render_status({"xmpp": {"connected": False}}, NOW)


# -- main() against a real HTTP server -------------------------------------------------

class Api:
    """Canned API answers keyed by request target; records what it was asked.

    An answer may be a list of answers, served in turn (the last one then stays).
    """

    def __init__(self):
        now = time.time()
        self.routes = {
            "/api/v1/status": (200, {"version": "0.1.0", "server_time": now,
                                     "started_at": now - 60,
                                     "xmpp": {"connected": True, "jid": "master@medulla.test/m"},
                                     "machines": {"total": 3, "online": 2, "offline": 1}}),
            "/api/v1/machines": (200, {"machines": [
                machine("ws-01", "m-1", last_seen=now - 12),
                machine("ws-02", "m-2", online=False, last_seen=now - 400),
                machine("ws-03", "m-3", last_seen=now - 1)]}),
            "/api/v1/machines?online=true": (200, {"machines": [machine("ws-01", "m-1")]}),
            "/api/v1/machines?online=false": (200, {"machines": []}),
            "/api/v1/machines/ws-01": (200, machine("ws-01", "m-1", last_seen=now - 5, history=[
                {"ts": now - 5, "event": "online", "detail": "from 192.0.2.10"}])),
            "/api/v1/machines/ghost": (404, {"error": "not-found",
                                             "message": "no machine named 'ghost'"}),
            "/api/v1/machines/dup": (409, {
                "error": "ambiguous", "message": "2 machines match 'dup'; use a uuid or JID",
                "candidates": [{"uuid": "m-3", "hostname": "dup", "jid": "a@x/1"},
                               {"uuid": "m-4", "hostname": "dup", "jid": "b@x/2"}]}),
            "/api/v1/machines/crash": (500, {"error": "internal",
                                             "message": "see the medulla-master log"}),
            "/api/v1/machines/teapot": (200, "<html>not json</html>"),
            "/api/v1/machines/moved": (302, {}),
        }
        self.post_routes = {
            "/api/v1/machines/ws-01/reset-key": (200, {"uuid": "m-1", "hostname": "ws-01",
                                                       "key_reset": True}),
            "/api/v1/machines/ghost/reset-key": (404, {"error": "not-found",
                                                       "message": "no machine named 'ghost'"}),
            "/api/v1/machines/dup/reset-key": self.routes["/api/v1/machines/dup"],
            "/api/v1/machines/evil/reset-key": (200, {"uuid": "m-6", "hostname": "\x1b[2Jevil",
                                                      "key_reset": True}),
            "/api/v1/machines/moved/reset-key": (302, {}),
        }
        self.delete_routes = {}
        self.seen = []
        self.posted = []
        self.deleted = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                api.seen.append((self.path, self.headers.get("Authorization")))
                self.answer(api.routes)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                api.posted.append((self.path, self.headers.get("Authorization"),
                                   self.rfile.read(length)))
                self.answer(api.post_routes)

            def do_DELETE(self):
                api.deleted.append((self.path, self.headers.get("Authorization")))
                self.answer(api.delete_routes)

            def answer(self, routes):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    code, body = 401, {"error": "unauthorized"}
                else:
                    answer = routes.get(self.path, (404, {"error": "not-found"}))
                    if isinstance(answer, list):
                        answer = answer.pop(0) if len(answer) > 1 else answer[0]
                    code, body = answer
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                if code == 302:
                    self.send_header("Location", "/api/v1/status")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def api():
    server = Api()
    yield server
    server.stop()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def ctl(api, token_file, capsys, monkeypatch):
    # A proxy in the admin's environment must not see the token: point one at nothing.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("MEDULLA_API_URL", api.url)
    monkeypatch.setenv("MEDULLA_API_TOKEN_FILE", token_file)

    def run(*argv):
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        out, err = capsys.readouterr()
        return info.value.code, out, err
    return run


def test_machines_table(ctl, api):
    code, out, err = ctl("machines")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("HOSTNAME  STATE    LAST SEEN")
    assert lines[1].split()[:4] == ["ws-01", "online", "12s", "ago"]
    assert lines[2].split()[:4] == ["ws-02", "offline", "6m", "ago"]
    assert lines[-1] == "3 machines, 2 online"
    assert api.seen == [("/api/v1/machines", f"Bearer {TOKEN}")]


def test_machines_online_offline_filters(ctl, api):
    assert ctl("machines", "--online")[1].splitlines()[-1] == "1 machine, 1 online"
    assert ctl("machines", "--offline")[1] == "0 machines, 0 online\n"
    assert [p for p, _ in api.seen] == ["/api/v1/machines?online=true",
                                        "/api/v1/machines?online=false"]
    code, _, err = ctl("machines", "--online", "--offline")
    assert code == 2 and "not allowed with" in err


@pytest.mark.parametrize("argv", [("--json", "machines"), ("machines", "--json")])
def test_machines_json_is_the_list(ctl, argv):
    code, out, _ = ctl(*argv)
    assert code == 0
    assert [m["uuid"] for m in json.loads(out)] == ["m-1", "m-2", "m-3"]


def test_machine_show(ctl):
    code, out, err = ctl("machine", "show", "ws-01")
    assert (code, err) == (0, "")
    assert out.startswith("hostname:        ws-01\nuuid:            m-1\n")
    assert "last seen:       5s ago" in out
    assert "HISTORY\nWHEN" in out and "from 192.0.2.10" in out


def test_machine_show_json(ctl):
    code, out, _ = ctl("--json", "machine", "show", "ws-01")
    assert code == 0 and json.loads(out)["history"][0]["event"] == "online"


def test_unknown_machine_exits_1_with_one_line(ctl):
    assert ctl("machine", "show", "ghost") == (1, "", "medullactl: no machine named 'ghost'\n")


def test_ambiguous_machine_exits_1_listing_candidates(ctl):
    code, out, err = ctl("machine", "show", "dup")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "medullactl: 2 machines match 'dup'; use a uuid or JID"
    assert lines[1].split() == ["HOSTNAME", "UUID", "JID"]
    assert [line.split()[1] for line in lines[2:]] == ["m-3", "m-4"]


def test_machine_reset_key_posts_and_says_what_happens_next(ctl, api):
    code, out, err = ctl("machine", "reset-key", "ws-01")
    assert (code, err) == (0, "")
    assert out == "key of ws-01 (m-1) reset: its next enrolment pins the new key\n"
    assert api.posted == [("/api/v1/machines/ws-01/reset-key", f"Bearer {TOKEN}", b"")]
    assert api.seen == []  # one POST, nothing else


@pytest.mark.parametrize("argv", [("--json", "machine", "reset-key", "ws-01"),
                                  ("machine", "reset-key", "--json", "ws-01")])
def test_machine_reset_key_json(ctl, argv):
    code, out, _ = ctl(*argv)
    assert code == 0
    assert json.loads(out) == {"uuid": "m-1", "hostname": "ws-01", "key_reset": True}


def test_machine_reset_key_quotes_the_name(ctl, api):
    assert ctl("machine", "reset-key", "ws 01/x?y")[0] == 1
    assert [p for p, _, _ in api.posted] == ["/api/v1/machines/ws%2001%2Fx%3Fy/reset-key"]


def test_machine_reset_key_of_an_unknown_machine_exits_1(ctl):
    assert ctl("machine", "reset-key", "ghost") == (
        1, "", "medullactl: no machine named 'ghost'\n")


def test_machine_reset_key_of_an_ambiguous_name_exits_1_listing_candidates(ctl, api):
    code, out, err = ctl("machine", "reset-key", "dup")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "medullactl: 2 machines match 'dup'; use a uuid or JID"
    assert [line.split()[1] for line in lines[2:]] == ["m-3", "m-4"]


def test_machine_reset_key_escapes_the_hostname(ctl):
    code, out, _ = ctl("machine", "reset-key", "evil")
    assert code == 0 and "\x1b" not in out
    assert out.startswith("key of \\x1b[2Jevil (m-6) reset")


def test_machine_reset_key_follows_no_redirect(ctl, api):
    code, out, err = ctl("machine", "reset-key", "moved")
    assert (code, out) == (1, "")
    assert err == "medullactl: the master API answered HTTP 302 (error)\n"
    assert [p for p, _, _ in api.posted] == ["/api/v1/machines/moved/reset-key"]
    assert api.seen == []


def test_machine_reset_key_unreachable_exits_3_and_wrong_token_exits_4(ctl, token_file, api):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = ctl("--url", f"http://127.0.0.1:{port}", "machine", "reset-key", "ws-01")
    assert code == 3 and "connection refused" in err
    with open(token_file, "w") as f:
        f.write("not-the-token\n")
    code, out, err = ctl("machine", "reset-key", "ws-01")
    assert (code, out) == (4, "") and "HTTP 401" in err


def test_machine_reset_key_needs_a_name(ctl, api):
    assert ctl("machine", "reset-key")[0] == 2
    assert api.posted == []


def test_render_key_reset():
    assert render.render_key_reset({"uuid": "m-1", "hostname": "ws-01", "key_reset": True}) == \
        "key of ws-01 (m-1) reset: its next enrolment pins the new key"


def test_status_human_and_json(ctl):
    code, out, _ = ctl("status")
    assert code == 0
    assert out.startswith("medulla-master 0.1.0, up 1m 0s")
    assert "machines: 3 total, 2 online, 1 offline" in out
    assert json.loads(ctl("status", "--json")[1])["xmpp"]["connected"] is True


@pytest.mark.parametrize("name,message", [
    ("crash", "the master API answered HTTP 500 (internal): see the medulla-master log"
              " — see journalctl -u medulla-master"),
    ("teapot", "unexpected reply from {url}: not JSON (does --url point at medulla-master?)"),
    ("moved", "the master API answered HTTP 302 (error)")])
def test_api_errors_exit_1_with_one_line(ctl, api, name, message):
    code, out, err = ctl("machine", "show", name)
    assert (code, out) == (1, "")
    assert err == "medullactl: " + message.format(url=api.url) + "\n"
    assert [p for p, _ in api.seen] == [f"/api/v1/machines/{name}"]  # no redirect followed


def test_unreachable_master_exits_3(ctl):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert ctl("--url", url, "status") == (
        3, "", f"medullactl: cannot reach the master API at {url}: connection refused — "
               "is medulla-master running? (systemctl status medulla-master)\n")


def test_wrong_token_exits_4(ctl, token_file):
    with open(token_file, "w") as f:
        f.write("not-the-token\n")
    code, out, err = ctl("status")
    assert (code, out) == (4, "")
    assert err.startswith("medullactl: the master API at ") and "HTTP 401" in err
    assert err.count("\n") == 1 and "not-the-token" not in err


def test_token_file_problems_exit_4(ctl, token_file, tmp_path):
    os.chmod(token_file, 0o644)
    code, _, err = ctl("status")
    assert code == 4 and err.startswith(f"medullactl: API token {token_file} is accessible")
    code, _, err = ctl("--token-file", str(tmp_path / "absent"), "status")
    assert code == 4 and err.startswith(f"medullactl: cannot read API token {tmp_path}/absent")
    assert err.count("\n") == 1


def test_usage_errors_exit_2_and_help_exits_0(ctl):
    assert ctl()[0] == 2
    assert ctl("machine")[0] == 2
    assert ctl("frobnicate")[0] == 2
    code, _, err = ctl("--url", "file:///etc/shadow", "status")
    assert code == 2 and err == ("medullactl: invalid API URL 'file:///etc/shadow': "
                                 "expected http://HOST:PORT or https://...\n")
    for argv in (["--help"], ["machines", "--help"], ["machine", "show", "--help"],
                 ["machine", "reset-key", "--help"], ["status", "--help"]):
        code, out, _ = ctl(*argv)
        assert code == 0 and out.startswith("usage: medullactl")


def test_environment_defaults_are_overridden_by_options(ctl, api, token_file, monkeypatch):
    monkeypatch.setenv("MEDULLA_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MEDULLA_API_TOKEN_FILE", "/nonexistent")
    code, _, _ = ctl("status", "--url", api.url, "--token-file", token_file)
    assert code == 0
