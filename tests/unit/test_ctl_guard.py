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
