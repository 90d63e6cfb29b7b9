"""medullactl guard ...: medulla-guard's control socket, as an admin uses it."""

import io
import json
import socket
import threading

import pytest

from medulla_appliance.ctl.__main__ import run


@pytest.fixture
def guard_socket(tmp_path):
    """A stand-in for medulla-guard's control socket: answers each JSON line with the
    next canned reply and records the requests."""
    path = str(tmp_path / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    state = {"requests": [], "replies": []}

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile("rb").readline()
                state["requests"].append(json.loads(line))
                conn.sendall(json.dumps(state["replies"].pop(0)).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    yield path, state
    server.close()


def medullactl(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), env={}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_bans_are_listed_as_a_table(guard_socket):
    path, state = guard_socket
    state["replies"].append({"ok": True, "bans": [
        {"address": "203.0.113.7", "jail": "sshd", "offence": 2, "failures": 5,
         "remaining_s": 540.0, "banned_for_s": 1200.0}]})
    code, out, err = medullactl("guard", "--socket", path, "bans")
    assert code == 0, err
    assert state["requests"] == [{"cmd": "bans"}]
    assert "203.0.113.7" in out and "sshd" in out and "ADDRESS" in out


def test_ban_and_unban_send_the_address(guard_socket):
    path, state = guard_socket
    state["replies"] += [
        {"ok": True, "ban": {"address": "2001:db8::5", "jail": "manual", "offence": 1,
                             "failures": 0, "remaining_s": 60, "banned_for_s": 60}},
        {"ok": True, "address": "2001:db8::5", "was_banned": True}]
    assert medullactl("guard", "--socket", path, "ban", "2001:db8::5", "--seconds", "60")[0] == 0
    code, out, _ = medullactl("guard", "--socket", path, "unban", "2001:db8::5")
    assert code == 0 and "unbanned 2001:db8::5" in out
    assert state["requests"] == [{"cmd": "ban", "address": "2001:db8::5", "seconds": 60.0},
                                 {"cmd": "unban", "address": "2001:db8::5"}]


def test_a_refusal_is_one_line_and_exit_1(guard_socket):
    path, state = guard_socket
    state["replies"].append({"ok": False, "error": "allowlisted",
                             "message": "127.0.0.1 is on the allowlist"})
    code, out, err = medullactl("guard", "--socket", path, "ban", "127.0.0.1")
    assert code == 1 and "allowlist" in err and len(err.strip().splitlines()) == 1


def test_no_guard_running_is_exit_3(tmp_path):
    code, _, err = medullactl("guard", "--socket", str(tmp_path / "none.sock"), "status")
    assert code == 3 and "is medulla-guard running?" in err


# -- guard fleet: the master's API, not the socket ---------------------------------------

@pytest.fixture
def master_api(tmp_path):
    """A stand-in for the master's API over real HTTP on 127.0.0.1 (test_ctl's Api)."""
    from tests.unit.test_ctl import TOKEN, Api
    api = Api()
    token = tmp_path / "api-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    yield api, {"MEDULLA_API_URL": api.url, "MEDULLA_API_TOKEN_FILE": str(token)}
    api.stop()


def fleet(env, *argv, now=1_763_820_000.0):
    out, err = io.StringIO(), io.StringIO()
    code = run(["guard", "fleet", *argv], env=env, stdout=out, stderr=err, now=lambda: now)
    return code, out.getvalue(), err.getvalue()


def test_fleet_lists_every_hosts_bans_from_the_master_api(master_api, tmp_path):
    api, env = master_api
    now = 1_763_820_000.0
    api.routes["/api/v1/bans"] = (200, {"server_time": now, "bans": [
        {"host": "lyon", "address": "198.51.100.1", "jail": "sshd", "failures": 5,
         "banned_at": now - 60, "until": now + 540, "manual": False, "updated_at": now},
        {"host": "master", "address": "2001:db8::5", "jail": "manual", "failures": 0,
         "banned_at": now, "until": now + 3600, "manual": True, "updated_at": now},
        {"host": "\x1b[2Jevil", "address": "203.0.113.9", "jail": "sshd", "failures": 7,
         "banned_at": now, "until": now + 60, "manual": False, "updated_at": now}]})
    api.routes["/api/v1/bans?host=lyon"] = (200, {"bans": []})
    # --socket points nowhere: fleet never touches the local control socket.
    code, out, err = fleet(env, "--url", api.url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ADDRESS", "HOST", "JAIL", "UNTIL", "FAILURES"]
    assert lines[1].split()[:3] == ["198.51.100.1", "lyon", "sshd"]
    assert lines[1].endswith("(9m 0s)  5")
    assert lines[2].split()[:3] == ["2001:db8::5", "master", "manual"]
    assert lines[2].endswith("admin")
    assert "\x1b" not in out and "\\x1b[2Jevil" in lines[3]
    code, out, _ = fleet(env, "--host", "lyon")
    assert (code, out.strip()) == (0, "no address is banned on any host")
    assert [path for path, _ in api.seen] == ["/api/v1/bans", "/api/v1/bans?host=lyon"]
    code, out, _ = fleet(env, "--json")
    assert code == 0 and json.loads(out)[0]["address"] == "198.51.100.1"


def test_fleet_without_a_master_is_exit_3_and_says_so(tmp_path):
    token = tmp_path / "api-token"
    token.write_text("x\n")
    token.chmod(0o600)
    code, _, err = fleet({"MEDULLA_API_URL": "http://127.0.0.1:9",
                          "MEDULLA_API_TOKEN_FILE": str(token)})
    assert code == 3 and "is medulla-master running?" in err


def test_help_says_which_commands_ask_this_host_and_which_the_master(capsys):
    assert run(["guard", "--help"], env={}) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "through its control socket" in text and "the master's API" in text
    assert "this host: ban an address now" in text
