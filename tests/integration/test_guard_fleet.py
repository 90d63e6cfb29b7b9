"""medulla-guard's bans reach the master over a real XMPP server (prosody): a real
medulla-master process and a real medulla-guard process (dry-run backend) logged in as the
master's own account with resource ``guard`` and signing with the master's key. Five
failures in a followed log file show in ``medullactl guard fleet``; after the master
restarts having lost its list, and a ban made while it was down, the guard's next
snapshot brings both back."""

import json
import sqlite3
import time

import pytest

from medulla_appliance.testing.appliance import Appliance
from tests.integration.test_guard_follow import FAIL, Guard, append

pytestmark = pytest.mark.integration
SNAPSHOT_INTERVAL_S = 10


def fleet(appliance):
    """The bans ``medullactl --json guard fleet`` lists, by address."""
    done = appliance.ctl("--json", "guard", "fleet")
    assert done.returncode == 0, done.stderr
    return {b["address"]: b for b in json.loads(done.stdout)}


def wait_for(predicate, timeout, what, logs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting for %s\n%s" % (what, "\n".join(
        "--- %s\n%s" % (path.name, path.read_text()[-3000:]) for path in logs)))


def test_a_ban_on_the_master_host_shows_fleet_wide_and_survives_a_master_restart(
        prosody_server, tmp_path):
    appliance = Appliance(tmp_path / "appliance", prosody_server)
    appliance.start_master()
    log = tmp_path / "auth.log"
    log.write_text("")
    guard = Guard(tmp_path / "guard", {"sshd": "[jail]\nsources = file:%s\nbantime = 1h\n"
                                       % log}, extra=(
        "fleet_from_master = %s\nsnapshot_interval = %ds\n"
        "[xmpp]\njid = master@%s/guard\npassword_file = %s\nport = %d\nca_file = %s\n"
        "master_jid = master@%s/master\n[keys]\nprivate_key = %s\n" % (
            appliance.config_path, SNAPSHOT_INTERVAL_S, appliance.domain,
            appliance.workdir / "master-xmpp.password", prosody_server.c2s_port,
            prosody_server.ca.cert_path, appliance.domain, appliance.state / "master.key")))
    logs = [guard.log, appliance.master_log]
    try:
        guard.start()
        wait_for(lambda: "XMPP session up" in guard.log.read_text(), 20,
                 "the guard's XMPP session", logs)
        append(log, FAIL % "198.51.100.21" * 4)
        time.sleep(1.5)
        assert "198.51.100.21" not in fleet(appliance)  # four failures ban nobody
        append(log, FAIL % "198.51.100.21")
        bans = wait_for(lambda: fleet(appliance), 15, "the ban in the fleet view", logs)
        ban = bans["198.51.100.21"]
        assert (ban["host"], ban["jail"], ban["failures"], ban["manual"]) == (
            "master", "sshd", 5, False)
        assert 3590 <= ban["until"] - ban["banned_at"] <= 3610
        table = appliance.ctl("guard", "fleet")
        assert table.returncode == 0 and "198.51.100.21  master  sshd" in table.stdout

        # The master stops and comes back with its list lost; meanwhile another ban.
        appliance.stop_master()
        with sqlite3.connect(appliance.state / "master.sqlite") as db:
            db.execute("DELETE FROM bans")
        append(log, FAIL % "198.51.100.22" * 5)
        guard.wait_for(lambda: "198.51.100.22" in guard.bans())
        appliance.start_master()
        # 198.51.100.21 was said once, before the list was lost: only a snapshot brings
        # it back.
        wait_for(lambda: set(fleet(appliance)) == {"198.51.100.21", "198.51.100.22"},
                        SNAPSHOT_INTERVAL_S + 15, "the guard's next snapshot", logs)
        # An admin's unban on the host reaches the fleet view too.
        guard.call("unban", address="198.51.100.21")
        wait_for(lambda: set(fleet(appliance)) == {"198.51.100.22"}, 15, "the unban", logs)
    finally:
        guard.stop()
        appliance.stop_master()
