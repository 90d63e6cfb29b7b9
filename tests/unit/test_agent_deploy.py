"""The agent's deployments: downloaded and checked before anything runs, steps reported,
results sent until acknowledged, honest after a restart. Fake relay and runner, real
step engine and descriptor parser, task.Clock."""

import hashlib
import json
import os
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task

from medulla_agent.deploy import Jobs
from medulla_agent.download import HashError, TransferError
from medulla_appliance.core.xmpp.channel import Refusal

FILE = b"#!/bin/sh\necho hello\n"


def descriptor(steps):
    return json.dumps({
        "schema": 1, "id": "hello", "name": "Hello", "version": "1.0", "os": ["linux"],
        "files": [{"path": "bin/hello.sh", "sha256": hashlib.sha256(FILE).hexdigest(),
                   "size": len(FILE)}],
        "sequences": {"linux": {"install": steps}}}).encode()


OK_STEPS = [{"type": "script", "label": "run", "body": "sh bin/hello.sh"}]
FAIL_STEPS = [{"type": "script", "label": "run", "body": "exit 3"}]


class FakeRelay:
    def __init__(self, raw, fail=None):
        self.raw, self.fail, self.fetched = raw, fail, []

    def fetch_bytes(self, url, token, limit):
        return defer.succeed(self.raw)

    def fetch(self, url, token, path, size, sha256):
        if self.fail:
            return defer.fail(self.fail)
        self.fetched.append(url)
        with open(path, "wb") as f:
            f.write(FILE)
        return defer.succeed(None)


class FakeRunner:
    def __init__(self, codes):
        self.codes, self.scripts = codes, []

    def run_script(self, interpreter, body, env, timeout):
        self.scripts.append((body, env))
        return defer.succeed((self.codes.pop(0), b"output of " + body.encode()))


def order(raw, **over):
    data = {"deployment": "dep-1", "package": "hello", "url": "http://relay/packages/hello/",
            "token": "t", "descriptor_sha256": hashlib.sha256(raw).hexdigest(),
            "sequence": "install", **over}
    return SimpleNamespace(data=data, sessionid="dep-1:m-1:1")


@pytest.fixture
def make(tmp_path):
    def build(raw, codes=(0,), fail=None):
        clock, sent = task.Clock(), []
        runner = FakeRunner(list(codes))
        jobs = Jobs(str(tmp_path / "deployments"), clock,
                    lambda action, data, session: sent.append((action, data, session)),
                    FakeRelay(raw, fail), lambda cwd: runner, max_bytes=10 ** 6)
        return jobs, clock, sent, runner
    return build


def results(sent):
    return [data for action, data, _ in sent if action == "deploy.result"]


def test_a_package_is_fetched_checked_run_and_reported(make):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    assert jobs.on_start(None, order(raw)) == {"accepted": True}
    clock.advance(0)
    assert runner.scripts and runner.scripts[0][1]["MEDULLA_DEPLOYMENT"] == "dep-1"
    progress = [d for a, d, _ in sent if a == "deploy.progress"]
    assert [(p["label"], p["ok"], p["ret"]) for p in progress] == [("run", True, 0)]
    assert results(sent) == [{"deployment": "dep-1", "state": "success", "step": "run",
                              "ret": 0, "message": ""}]


def test_a_failing_script_is_an_error_never_a_success(make):
    raw = descriptor(FAIL_STEPS)
    jobs, clock, sent, runner = make(raw, codes=[3])
    jobs.on_start(None, order(raw))
    clock.advance(0)
    (result,) = results(sent)
    assert (result["state"], result["step"], result["ret"]) == ("error", "run", 3)


def test_a_descriptor_that_is_not_the_signed_one_runs_nothing(make):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    jobs.on_start(None, order(raw, descriptor_sha256="0" * 64))
    clock.advance(0)
    assert runner.scripts == []
    assert results(sent)[0]["state"] == "hash-invalid"


@pytest.mark.parametrize("error, state", [(TransferError("cut"), "transfer-failed"),
                                          (HashError("bad"), "hash-invalid")])
def test_a_bad_file_runs_nothing(make, error, state):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw, fail=error)
    jobs.on_start(None, order(raw))
    clock.advance(0)
    assert runner.scripts == [] and results(sent)[0]["state"] == state


def test_an_incomplete_order_is_refused(make):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    with pytest.raises(Refusal):
        jobs.on_start(None, order(raw, url="file:///etc/shadow"))
    with pytest.raises(Refusal):
        jobs.on_start(None, order(raw, descriptor_sha256="nope"))
    assert sent == []


def test_the_result_is_sent_again_until_the_master_acknowledges_it(make, tmp_path):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    jobs.on_start(None, order(raw))
    clock.advance(0)
    jobs.resend_results()
    assert len(results(sent)) == 2
    # a restarted agent still has it
    again, _, sent2, _ = make(raw)
    again.resume()
    assert len(results(sent2)) == 1
    again.on_ack(None, SimpleNamespace(sessionid="dep-1:m-1:1"))
    assert os.listdir(tmp_path / "deployments") == []
    again.resend_results()
    assert len(results(sent2)) == 1


def test_an_order_received_twice_runs_once(make):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    jobs.on_start(None, order(raw))
    jobs.on_start(None, order(raw))
    clock.advance(0)
    assert len(runner.scripts) == 1 and len(results(sent)) == 1


def test_a_step_interrupted_by_an_agent_restart_is_reported_not_rerun(make, tmp_path):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    runner.run_script = lambda *a: defer.Deferred()  # never finishes: the agent "dies"
    jobs.on_start(None, order(raw))
    clock.advance(0)
    assert results(sent) == []
    again, clock2, sent2, runner2 = make(raw)
    again.resume()
    clock2.advance(0)
    assert runner2.scripts == []
    (result,) = results(sent2)
    assert result["state"] == "error" and result["step"] == "run"


def test_a_stop_ends_the_running_step_as_stopped(make):
    raw = descriptor(OK_STEPS)
    jobs, clock, sent, runner = make(raw)
    runner.run_script = lambda *a: defer.Deferred()
    jobs.on_start(None, order(raw))
    clock.advance(0)
    jobs.on_stop(None, SimpleNamespace(data={"deployment": "dep-1"}))
    (result,) = results(sent)
    assert result["state"] == "stopped"
