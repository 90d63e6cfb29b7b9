"""ABORT MISSING AGENT against real daemons: prosody, the master (with a 3 s
`[deploy] missing_agent_after`, set in master.ini.local as an admin would), medulla-relay
and one real agent process, SIGKILLed in the middle of a step. Then the agent comes back,
resumes, and its result replaces the abort: nothing it reports is lost."""

import json
import signal
import time

import pytest

from medulla_appliance.testing.appliance import Appliance, stop_process
from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.xmppserver import make_server
from tests.integration.test_deployment import deploy, make_package, targets, wait_states

pytestmark = pytest.mark.integration
MISSING = "ABORT MISSING AGENT"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("missing")
    ca = CertificateAuthority.create(work / "ca")
    server = make_server("prosody", work / "xmpp", "medulla.test", ca)
    server.start()
    app = Appliance(work / "app", server)
    (app.workdir / "master.ini.local").write_text("[deploy]\nmissing_agent_after = 3s\n")
    app.agent = None
    try:
        app.start_master()
        app.start_relay()
        app.agent = app.start_agent("real")
        app.wait_for(lambda ms: len(ms) == 1 and ms[0]["online"], timeout=60)
        yield app
    finally:
        stop_process(app.agent)
        stop_process(app.relay)
        app.stop_master()
        server.close()


def test_an_agent_killed_mid_deployment_ends_missing_then_its_result_still_counts(site):
    real = site.machines()[0]
    make_package(site, "long", [{"type": "script", "label": "long-step",
                                 "body": "echo started; sleep 20; echo done"}])
    dep = deploy(site, "long", real["uuid"])
    wait_states(site, dep, lambda t: t[real["hostname"]]["state"] == "DEPLOYMENT START")
    time.sleep(2)  # the download is done and the step runs
    site.agent.send_signal(signal.SIGKILL)
    site.agent.wait(10)
    killed_at = time.monotonic()
    site.wait_for(lambda ms: not ms[0]["online"], timeout=10)
    final = wait_states(site, dep, lambda t: t[real["hostname"]]["state"] == MISSING,
                        timeout=30)
    assert time.monotonic() - killed_at >= 3  # not before the configured delay
    assert final[real["hostname"]]["state"] == MISSING
    # the audit log says why, and medullactl counts it as done and failed
    audit = site.api("/api/v1/deployments/%s/machines/%s/audit" % (dep, real["uuid"]))["audit"]
    reason = [a for a in audit if a["kind"] == "state" and a["label"] == MISSING]
    assert len(reason) == 1 and "offline for" in reason[0]["output"]
    shown = site.ctl("audit", dep)
    assert MISSING in shown.stdout and "1/1 done" in shown.stdout and "1 failed" in shown.stdout
    listed = json.loads(site.ctl("--json", "audit").stdout)
    assert next(d for d in listed if d["id"] == dep)["states"] == {MISSING: 1}
    # the agent comes back: it resumes the job and reports; its word replaces the abort
    site.agent = site.start_agent("real")
    after = wait_states(site, dep, lambda t: t[real["hostname"]]["state"] != MISSING,
                        timeout=60)
    target = after[real["hostname"]]
    assert target["state"] in ("ABORT PACKAGE EXECUTION ERROR", "DEPLOYMENT SUCCESS")
    assert target["detail"].startswith("result after ABORT MISSING AGENT")
    assert targets(site, dep)[real["hostname"]]["state"] == target["state"]
