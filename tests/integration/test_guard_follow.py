"""medulla-guard as a process (dry-run backend): it follows a real file across rotation by
rename, copytruncate and truncation, reads the journal through journalctl (a stand-in
script here), keeps its bans and read positions across a restart, and answers on its
control socket."""

import json
import os
import subprocess
import sys
import time

import pytest

from medulla_appliance.guard import control

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAIL = "Failed password for root from %s port 4242 ssh2\n"
FAKE_JOURNALCTL = """#!/bin/sh
# Stands in for journalctl: prints the entries of $JOURNAL_FILE as they come (JSON lines).
exec tail -n +1 -F "%s" 2>/dev/null
"""


class Guard:
    """A medulla-guard process on a temp folder, stopped by PID."""

    def __init__(self, root, jails, prefix=(), backend="dryrun", extra=""):
        self.root, self.prefix = root, list(prefix)
        (root / "rules" / "jails").mkdir(parents=True, exist_ok=True)
        filters = root / "rules" / "filters"
        filters.mkdir(exist_ok=True)
        (filters / "sshd.ini").write_text(
            open(os.path.join(ROOT, "etc/guard.d/filters/sshd.ini")).read())
        for name, text in jails.items():
            (root / "rules" / "jails" / (name + ".ini")).write_text(text)
        self.socket = str(root / "run" / "control.sock")
        self.ini = root / "guard.ini"
        self.ini.write_text(
            "[global]\nlog_level = DEBUG\n[guard]\nbackend = %s\nrules_dir = %s\n"
            "state_dir = %s\ncontrol_socket = %s\n%s" % (
                backend, root / "rules", root / "state", self.socket, extra))
        self.process = None
        self.log = root / "guard.log"

    def start(self):
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.prefix + [sys.executable, "-m", "medulla_appliance.guard",
                               "--config", str(self.ini)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("medulla-guard exited: " + self.log.read_text()[-2000:])
            try:
                return self.call("status")
            except control.ControlClientError:
                time.sleep(0.05)
        raise AssertionError("medulla-guard not ready: " + self.log.read_text()[-2000:])

    def call(self, command, **args):
        return control.call(command, socket_path=self.socket, timeout=5, **args)

    def bans(self):
        return {b["address"]: b for b in self.call("bans")["bans"]}

    def stop(self, sig=15):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError("timed out; guard log:\n" + self.log.read_text()[-3000:])


@pytest.fixture
def guard_factory(tmp_path):
    started = []

    def make(*args, **kw):
        guard = Guard(tmp_path, *args, **kw)
        started.append(guard)
        return guard
    yield make
    for guard in started:
        guard.stop()


def append(path, text):
    with open(path, "a") as f:
        f.write(text)
        f.flush()


def test_file_followed_across_rotation_copytruncate_and_truncation(guard_factory, tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("")
    guard = guard_factory({"sshd": "[jail]\nsources = file:%s\nbantime = 1h\n" % log})
    guard.start()
    # 1) rotation by rename: 2 failures before, 3 after, in the new file
    append(log, FAIL % "198.51.100.1" * 2)
    time.sleep(0.3)
    os.rename(log, tmp_path / "auth.log.1")
    append(tmp_path / "auth.log.1", FAIL % "198.51.100.1")   # late line in the old file
    append(log, FAIL % "198.51.100.1" * 2)
    assert guard.wait_for(lambda: "198.51.100.1" in guard.bans())
    # 2) copytruncate: the same inode emptied, then written again
    append(log, FAIL % "198.51.100.2" * 2)
    time.sleep(0.3)
    with open(log, "r+") as f:
        f.truncate(0)
    append(log, FAIL % "198.51.100.2" * 3)
    assert guard.wait_for(lambda: "198.51.100.2" in guard.bans())
    # 3) truncated and rewritten longer than before, between two looks
    append(log, FAIL % "198.51.100.3" * 4)
    time.sleep(0.3)
    with open(log, "w") as f:
        f.write("x" * 4000 + "\n" + FAIL % "198.51.100.3")
    assert guard.wait_for(lambda: "198.51.100.3" in guard.bans())
    status = guard.call("status")
    assert status["jails"][0]["bans"] == 3


def test_restart_keeps_bans_and_resumes_reading_where_it_stopped(guard_factory, tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("")
    guard = guard_factory({"sshd": "[jail]\nsources = file:%s\nbantime = 1h\n" % log})
    guard.start()
    append(log, FAIL % "198.51.100.5" * 5)
    guard.wait_for(lambda: "198.51.100.5" in guard.bans())
    append(log, FAIL % "198.51.100.6" * 2)
    time.sleep(0.5)  # read, and its position saved at stop
    guard.stop()
    append(log, FAIL % "198.51.100.6" * 3)   # written while the guard is down
    guard.start()
    assert "198.51.100.5" in guard.bans()
    # 2 before the stop + 3 while down: the saved position makes them 5
    assert guard.wait_for(lambda: "198.51.100.6" in guard.bans())


def test_journal_source_through_journalctl(guard_factory, tmp_path):
    entries = tmp_path / "journal.jsonl"
    entries.write_text("")
    fake = tmp_path / "journalctl"
    fake.write_text(FAKE_JOURNALCTL % entries)
    fake.chmod(0o755)
    guard = guard_factory({"sshd": "[jail]\nsources = journal\n"},
                          extra="journalctl = %s\n" % fake)
    guard.start()
    lines = []
    for i in range(5):
        lines.append({"__CURSOR": "c%d" % i, "SYSLOG_IDENTIFIER": "sshd",
                      "MESSAGE": "Invalid user admin from 10.0.0.1 from 2001:db8::66 port 22"})
        lines.append({"__CURSOR": "x%d" % i, "SYSLOG_IDENTIFIER": "sudo",
                      "MESSAGE": "Failed password for root from 198.51.100.9 port 22 ssh2"})
    append(entries, "".join(json.dumps(e) + "\n" for e in lines))
    bans = guard.wait_for(guard.bans)
    assert list(bans) == ["2001:db8::66"]
    guard.stop()
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["cursors"]["sshd"] == "x4"


def test_bad_jail_file_stops_the_daemon_with_exit_78(guard_factory):
    guard = guard_factory({"sshd": "[jail]\nsources = journal\nmaxretry = many\n"})
    with pytest.raises(AssertionError, match="maxretry"):
        guard.start()
    assert guard.process.returncode == 78


def test_sighup_adds_a_jail_and_a_bad_rules_folder_is_refused(guard_factory, tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("")
    other = tmp_path / "elsewhere" / "auth.log"
    other.parent.mkdir()
    other.write_text("")
    guard = guard_factory({"sshd": "[jail]\nsources = file:%s\n" % log})
    guard.start()
    jails = guard.root / "rules" / "jails"
    (jails / "sshd2.ini").write_text("[jail]\nfilter = sshd\nsources = file:%s\n" % other)
    guard.process.send_signal(1)  # SIGHUP
    guard.wait_for(lambda: [j["name"] for j in guard.call("status")["jails"]] ==
                   ["sshd", "sshd2"])
    append(other, FAIL % "198.51.100.30" * 5)
    assert guard.wait_for(lambda: "198.51.100.30" in guard.bans())
    # A broken jail file: the reload is refused and both jails go on.
    (jails / "sshd3.ini").write_text("[jail]\nsources = file:%s\nfindtime = soon\n" % log)
    guard.process.send_signal(1)
    guard.wait_for(lambda: "reload refused" in guard.log.read_text())
    # ...and the runtime does not claim otherwise (it used to log "reloaded" anyway).
    guard.wait_for(lambda: "not applied" in guard.log.read_text())
    assert guard.log.read_text().count("configuration reloaded") == 1  # the first SIGHUP
    assert guard.process.poll() is None
    assert [j["name"] for j in guard.call("status")["jails"]] == ["sshd", "sshd2"]
    append(log, FAIL % "198.51.100.31" * 5)
    assert guard.wait_for(lambda: "198.51.100.31" in guard.bans())
    assert "198.51.100.30" in guard.bans()
