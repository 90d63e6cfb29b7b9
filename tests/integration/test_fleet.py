"""The first thing an admin checks: are my workstations there, and online?

Against real prosody and real ejabberd on loopback: the master and one real agent run as
processes, 49 more agents run as real XMPP connections in one swarm process.
"""

import signal
import subprocess
import sys
import time

import pytest

from medulla_appliance.testing.appliance import Appliance, stop_process
from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.xmppserver import make_server

pytestmark = pytest.mark.integration

SWARM = 49
FLEET = SWARM + 1


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def fleet(request, tmp_path_factory):
    """A running master, one real agent and 49 swarm agents, all online."""
    work = tmp_path_factory.mktemp("fleet-" + request.param)
    ca = CertificateAuthority.create(work / "ca")
    server = make_server(request.param, work / "xmpp", "medulla.test", ca)
    server.start()
    app = Appliance(work / "app", server, presence={"ping_after": "3s", "ping_timeout": "2s",
                                                    "reconcile_after": "10s"})
    processes = {}
    try:
        app.start_master()
        processes["real"] = app.start_agent("real")
        processes["swarm"] = app.start_swarm("swarm", SWARM, prefix="ws")
        app.wait_for(lambda ms: sum(m["online"] for m in ms) == FLEET, timeout=90)
        app.processes = processes
        yield app
    finally:
        for process in processes.values():
            stop_process(process)
        app.stop_master()
        server.close()


def online(machines):
    return {m["hostname"] for m in machines if m["online"]}


def wait_all_back_since(app, since, timeout):
    """Every machine has shown itself online again (a new history line) since `since`:
    the flags alone could still be the ones from before."""
    deadline = time.monotonic() + timeout
    missing = None
    while time.monotonic() < deadline:
        missing = []
        for m in app.machines():
            history = app.api("/api/v1/machines/%s" % m["uuid"])["history"]
            if not (m["online"] and any(h["event"] == "online" and h["ts"] >= since
                                        for h in history)):
                missing.append(m["hostname"])
        if not missing:
            return
        time.sleep(1)
    raise AssertionError("not back online since the restart: %s" % missing[:10])


def test_fifty_agents_register_and_show_online(fleet):
    machines = fleet.machines()
    assert len(machines) == FLEET
    assert len(online(machines)) == FLEET
    swarm = [m for m in machines if m["hostname"].startswith("ws-")]
    assert len(swarm) == SWARM
    assert all(m["relay"] == "master" and m["key_fingerprint"].startswith("SHA256:")
               for m in machines)
    # medullactl shows the same, as an admin types it.
    out = subprocess.run([sys.executable, "-m", "medulla_appliance.ctl", "machines"],
                         env=fleet.ctl_env(), capture_output=True, text=True, check=True).stdout
    assert "%d machines, %d online" % (FLEET, FLEET) in out
    assert "ws-00048" in out


def test_killed_agent_goes_offline_within_5s(fleet):
    real = next(m for m in fleet.machines() if not m["hostname"].startswith("ws-"))
    process = fleet.processes.pop("real")
    killed_at = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    fleet.wait_for(lambda ms: real["hostname"] not in online(ms), timeout=5, interval=0.05)
    assert time.monotonic() - killed_at < 5
    history = fleet.api("/api/v1/machines/%s" % real["uuid"])["history"]
    assert history[0]["event"] == "offline"
    # It comes back: same machine, not a duplicate.
    fleet.processes["real"] = fleet.start_agent("real")
    machines = fleet.wait_for(lambda ms: real["hostname"] in online(ms), timeout=30)
    assert len(machines) == FLEET


def test_restarted_master_keeps_machines_and_history(fleet):
    before = {m["uuid"]: m for m in fleet.machines()}
    some = next(iter(before))
    history_before = fleet.api("/api/v1/machines/%s" % some)["history"]
    fleet.stop_master()
    restarted = time.time()
    fleet.start_master()
    after = {m["uuid"]: m for m in fleet.machines()}
    assert set(after) == set(before)
    assert all(after[u]["hostname"] == before[u]["hostname"] for u in before)
    history_after = fleet.api("/api/v1/machines/%s" % some)["history"]
    assert history_after[-len(history_before):] == history_before
    # Subscriptions bring every agent's presence back to the new master session.
    wait_all_back_since(fleet, restarted, timeout=30)


def test_xmpp_server_restart_all_agents_back_within_60s(fleet):
    restarted_at, since = time.monotonic(), time.time()
    fleet.server.restart()
    wait_all_back_since(fleet, since, timeout=60)
    assert time.monotonic() - restarted_at < 60
    # No duplicates were enrolled by the reconnections.
    assert len(fleet.machines()) == FLEET
