"""Deploying a package, as an admin does it every day, against real daemons: prosody, the
master, medulla-relay serving the master's store, 20 agents through the relay (real XMPP
connections, real downloads, real /bin/sh steps) and one real agent process.

Each test uses its own package; the scripts only echo, sleep, exit or touch files in
their own package folder.
"""

import hashlib
import json
import os
import time

import pytest

from medulla_appliance.testing.appliance import Appliance, stop_process
from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.xmppserver import make_server

pytestmark = pytest.mark.integration
AGENTS = 20
FINAL = ("DEPLOYMENT SUCCESS", "ABORT TRANSFER FAILED", "ABORT HASH INVALID",
         "ABORT PACKAGE EXECUTION ERROR", "ABORT DEPLOYMENT CANCELLED BY USER",
         "ABORT ON TIMEOUT", "ABORT MISSING AGENT")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("deploy")
    ca = CertificateAuthority.create(work / "ca")
    server = make_server("prosody", work / "xmpp", "medulla.test", ca)
    server.start()
    app = Appliance(work / "app", server)
    app.processes = {}
    try:
        app.start_master()
        app.start_relay()
        app.processes["swarm"] = app.start_swarm("swarm", AGENTS, prefix="ws")
        app.processes["real"] = app.start_agent("real")
        app.wait_for(lambda ms: sum(m["online"] for m in ms) == AGENTS + 1, timeout=60)
        yield app
    finally:
        for process in app.processes.values():
            stop_process(process)
        stop_process(app.relay)
        app.stop_master()
        server.close()


def make_package(app, package_id, steps, payload=b"payload\n"):
    folder = app.workdir / ("src-" + package_id)
    folder.mkdir()
    (folder / "data.txt").write_bytes(payload)
    descriptor = {"schema": 1, "id": package_id, "name": package_id, "version": "1.0",
                  "os": ["linux"],
                  "files": [{"path": "data.txt", "size": len(payload),
                             "sha256": hashlib.sha256(payload).hexdigest()}],
                  "sequences": {"linux": {"install": steps}}}
    (folder / "descriptor.json").write_text(json.dumps(descriptor))
    result = app.ctl("package", "add", str(folder))
    assert result.returncode == 0, result.stderr
    return folder


def deploy(app, package_id, *targets, extra=()):
    result = app.ctl("--json", "deploy", package_id, *targets, *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def targets(app, dep_id):
    return {t["hostname"]: t for t in app.api("/api/v1/deployments/%s" % dep_id)["targets"]}


def wait_states(app, dep_id, done, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = targets(app, dep_id)
        if done(current):
            return current
        time.sleep(0.5)
    raise AssertionError("not reached in %ss: %s" % (
        timeout, {h: t["state"] for h, t in current.items()}))


def all_final(current):
    return all(t["state"] in FINAL for t in current.values())


def swarm(n=AGENTS):
    return ["ws-%05d" % i for i in range(n)]


def test_a_package_reaches_twenty_agents_through_the_relay(site):
    make_package(site, "hello", [{"type": "script", "label": "greet",
                                  "body": "cat data.txt; echo hello from $MEDULLA_HOSTNAME"}])
    dep = deploy(site, "hello", *swarm(), extra=("--max-per-relay", "5"))
    final = wait_states(site, dep, all_final)
    assert {t["state"] for t in final.values()} == {"DEPLOYMENT SUCCESS"}
    audit = site.api("/api/v1/deployments/%s/machines/ws-00007/audit" % dep)["audit"]
    steps = [a for a in audit if a["kind"] == "step"]
    assert [(s["label"], s["ok"], s["ret"]) for s in steps] == [("greet", 1, 0)]
    assert "payload" in steps[0]["output"] and "hello from ws-00007" in steps[0]["output"]
    # What the admin reads.
    out = site.ctl("audit", dep).stdout
    assert out.count("DEPLOYMENT SUCCESS") == AGENTS


def test_a_failing_script_aborts_with_its_output(site):
    make_package(site, "broken", [
        {"type": "script", "label": "install", "body": "echo disk full >&2; exit 3"},
        {"type": "script", "label": "never", "body": "echo should not run"}])
    dep = deploy(site, "broken", "ws-00001", "ws-00002")
    final = wait_states(site, dep, all_final)
    assert {t["state"] for t in final.values()} == {"ABORT PACKAGE EXECUTION ERROR"}
    assert final["ws-00001"]["step"] == "install"
    audit = site.api("/api/v1/deployments/%s/machines/ws-00001/audit" % dep)["audit"]
    steps = [a for a in audit if a["kind"] == "step"]
    assert [(s["label"], s["ret"]) for s in steps] == [("install", 3)]
    assert "disk full" in steps[0]["output"]


def test_a_corrupted_file_on_the_relay_runs_nothing(site):
    make_package(site, "tampered", [{"type": "script", "label": "mark",
                                     "body": "touch $MEDULLA_PACKAGE_DIR/../RAN"}])
    served = site.packages_root / "tampered" / "data.txt"
    served.write_bytes(b"PAYLOAD\n")  # same size, other bytes
    dep = deploy(site, "tampered", "ws-00003")
    final = wait_states(site, dep, all_final)
    assert final["ws-00003"]["state"] == "ABORT HASH INVALID"
    ran = list((site.workdir / "agents").rglob("RAN"))
    assert ran == []


def test_an_offline_agent_waits_then_runs_when_it_returns(site):
    real = next(m for m in site.machines() if not m["hostname"].startswith("ws-"))
    make_package(site, "later", [{"type": "script", "label": "run", "body": "echo ok"}])
    stop_process(site.processes.pop("real"))
    site.wait_for(lambda ms: not any(m["online"] for m in ms if m["uuid"] == real["uuid"]),
                  timeout=10)
    dep = deploy(site, "later", real["uuid"])
    wait_states(site, dep, lambda t: t[real["hostname"]]["state"] == "WAITING MACHINE ONLINE")
    site.processes["real"] = site.start_agent("real")
    final = wait_states(site, dep, all_final)
    assert final[real["hostname"]]["state"] == "DEPLOYMENT SUCCESS"


def test_an_offline_agent_expires_with_the_window(site):
    real = next(m for m in site.machines() if not m["hostname"].startswith("ws-"))
    make_package(site, "short", [{"type": "script", "label": "run", "body": "echo ok"}])
    # a window that starts in an hour: nothing happens yet
    later = deploy(site, "short", "ws-00004", extra=("--start", str(int(time.time()) + 3600)))
    time.sleep(1.5)
    assert targets(site, later)["ws-00004"]["state"] == "DEPLOYMENT PENDING"
    # an offline machine and a 3 s window: it expires, and nothing runs when it is back
    stop_process(site.processes.pop("real"))
    site.wait_for(lambda ms: not any(m["online"] for m in ms if m["uuid"] == real["uuid"]),
                  timeout=10)
    dep = deploy(site, "short", real["uuid"], extra=("--window", "3s"))
    final = wait_states(site, dep, all_final, timeout=30)
    assert final[real["hostname"]]["state"] == "ABORT ON TIMEOUT"
    site.processes["real"] = site.start_agent("real")
    site.wait_for(lambda ms: any(m["online"] for m in ms if m["uuid"] == real["uuid"]),
                  timeout=30)
    time.sleep(2)
    assert targets(site, dep)[real["hostname"]]["state"] == "ABORT ON TIMEOUT"


def test_a_stop_in_the_middle_cancels_the_running_step(site):
    make_package(site, "slow", [{"type": "script", "label": "sleep", "body": "sleep 60"}])
    dep = deploy(site, "slow", "ws-00006", "ws-00008")
    wait_states(site, dep, lambda t: all(x["state"] == "DEPLOYMENT START" for x in t.values()))
    time.sleep(1)
    assert site.ctl("deploy", "stop", dep).returncode == 0
    final = wait_states(site, dep, all_final, timeout=30)
    assert {t["state"] for t in final.values()} == {"ABORT DEPLOYMENT CANCELLED BY USER"}
    # restart: the stopped targets run again (and are stopped again here)
    assert site.ctl("deploy", "restart", dep).returncode == 0
    wait_states(site, dep, lambda t: all(x["state"] == "DEPLOYMENT START" for x in t.values()))
    site.ctl("deploy", "stop", dep)
    wait_states(site, dep, all_final, timeout=30)


def test_a_master_restart_during_the_run_loses_no_result(site):
    make_package(site, "pause", [{"type": "script", "label": "pause",
                                  "body": "sleep 4; echo finished"}])
    dep = deploy(site, "pause", *swarm(5))
    wait_states(site, dep, lambda t: all(x["state"] == "DEPLOYMENT START" for x in t.values()))
    site.stop_master()
    time.sleep(5)  # the agents finish while the master is away
    site.start_master()
    final = wait_states(site, dep, all_final, timeout=60)
    assert {t["state"] for t in final.values()} == {"DEPLOYMENT SUCCESS"}
    assert os.path.exists(site.master_log)


def test_a_saved_group_is_built_with_medullactl_and_deployed_to(site):
    make_package(site, "grouped", [{"type": "script", "label": "run", "body": "echo grouped"}])
    created = site.ctl("--json", "group", "create", "lab", "ws-00010", "ws-00011")
    assert created.returncode == 0, created.stderr
    assert sorted(m["hostname"] for m in json.loads(created.stdout)["machines"]) == [
        "ws-00010", "ws-00011"]
    assert site.ctl("group", "add", "lab", "ws-00012").returncode == 0
    assert site.ctl("group", "remove", "lab", "ws-00010").returncode == 0
    listed = site.ctl("group", "list").stdout
    assert "lab" in listed and "1 group" in listed
    # an unknown machine and an unknown group: clear refusals, nothing changes
    unknown = site.ctl("group", "add", "lab", "ws-99999")
    assert unknown.returncode == 1 and "no machine named 'ws-99999'" in unknown.stderr
    refused = site.ctl("deploy", "grouped", "group:nope")
    assert refused.returncode == 1 and "no group named 'nope'" in refused.stderr
    assert site.ctl("group", "create", "empty").returncode == 0
    refused = site.ctl("deploy", "grouped", "group:empty")
    assert refused.returncode == 1 and "group 'empty' has no machine" in refused.stderr
    dep = deploy(site, "grouped", "group:lab")
    final = wait_states(site, dep, all_final)
    assert sorted(final) == ["ws-00011", "ws-00012"]
    assert {t["state"] for t in final.values()} == {"DEPLOYMENT SUCCESS"}
    shown = site.ctl("group", "show", "lab").stdout
    assert "ws-00011" in shown and "ws-00010" not in shown
    assert site.ctl("group", "delete", "lab").returncode == 0
    assert site.ctl("group", "show", "lab").returncode == 1
