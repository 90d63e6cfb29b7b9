"""ABORT MISSING AGENT: a started deployment whose machine stays offline too long ends in
that state, from the coordinator's periodic pass; the agent's result, if it comes later,
still counts (it replaces the abort), and results of earlier attempts are kept in the
audit log. Time is a task.Clock; the store is a real SQLite file."""

from types import SimpleNamespace

import pytest
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core.xmpp.channel import Refusal
from medulla_appliance.master.logic import scheduler as s
from tests.unit import test_deployments

AFTER = 600  # the coordinator's default here is 15 minutes; tests set their own

coordinator = test_deployments.coordinator
run = test_deployments.run
started = test_deployments.started


def target(uuid, state=s.STARTED):
    return s.Target(uuid, state, 1, "master")


# -- the decision, alone -----------------------------------------------------------------

def test_an_offline_started_target_is_missing_only_after_the_delay():
    targets = [target("a")]
    decisions, since = s.missing_agents(1000, targets, set(), {}, AFTER)
    assert decisions == [] and since == {"a": 1000}
    decisions, since = s.missing_agents(1000 + AFTER - 1, targets, set(), since, AFTER)
    assert decisions == [] and since == {"a": 1000}
    decisions, since = s.missing_agents(1000 + AFTER, targets, set(), since, AFTER)
    assert [(d.uuid, d.state) for d in decisions] == [("a", s.MISSING_AGENT)]
    assert "offline for 600s" in decisions[0].detail and since == {}


def test_coming_back_online_starts_the_count_again():
    _, since = s.missing_agents(1000, [target("a")], set(), {}, AFTER)
    _, since = s.missing_agents(1500, [target("a")], {"a"}, since, AFTER)  # back (a reboot)
    assert since == {}
    decisions, since = s.missing_agents(1700, [target("a")], set(), since, AFTER)
    assert decisions == [] and since == {"a": 1700}


def test_online_agents_and_targets_not_started_are_never_missing():
    targets = [target("busy"), target("waiting", s.WAITING_ONLINE), target("done", s.SUCCESS)]
    decisions, since = s.missing_agents(10 ** 6, targets, {"busy"}, {"waiting": 0, "done": 0},
                                        AFTER)
    assert decisions == [] and since == {}


# -- the coordinator ---------------------------------------------------------------------

def states(c, dep_id):
    return {t["hostname"]: t["state"] for t in run(c.deps.details(dep_id))["targets"]}


def gone_missing(c):
    """pc-a is started, then its agent vanishes for longer than the delay."""
    c.deps.missing_agent_after = AFTER
    orders = started(c)
    session, data = orders["pc-a"]
    c.deps.registry.online.discard("m-a")
    run(c.deps.run_pass())
    c.clock.advance(AFTER - 1)
    run(c.deps.run_pass())
    assert states(c, data["deployment"])["pc-a"] == s.STARTED  # not yet
    c.clock.advance(1)
    run(c.deps.run_pass())
    return session, data["deployment"]


def test_a_silent_offline_agent_ends_in_abort_missing_agent_with_the_reason(coordinator):
    c = coordinator
    session, dep_id = gone_missing(c)
    assert states(c, dep_id) == {"pc-a": s.MISSING_AGENT, "pc-b": s.STARTED}
    audit = run(c.deps.audit(dep_id, "m-a"))
    last = audit[-1]
    assert (last["kind"], last["label"], last["session"]) == ("state", s.MISSING_AGENT, session)
    assert "offline for 600s since the deployment started" in last["output"]
    # a final state: the deployment is done once pc-b reports
    ack = run(c.deps.on_result(JID("pc-b.abc@d.test/res"), SimpleNamespace(
        sessionid=session.replace("m-a", "m-b"), data={"state": "success"})))
    assert ack == {"recorded": True}
    run(c.deps.run_pass())
    summary = run(c.deps.summary())
    assert summary[0]["states"] == {s.MISSING_AGENT: 1, s.SUCCESS: 1}
    assert run(c.deps.active_for_package("pkg")) == []


def test_an_agent_back_before_the_delay_keeps_its_deployment(coordinator):
    c = coordinator
    c.deps.missing_agent_after = AFTER
    orders = started(c)
    dep_id = orders["pc-a"][1]["deployment"]
    c.deps.registry.online.discard("m-a")
    run(c.deps.run_pass())
    c.clock.advance(AFTER - 10)
    c.deps.registry.online.add("m-a")  # a reboot step: back in time
    run(c.deps.run_pass())
    c.clock.advance(AFTER * 10)       # online and silent (a long step): never missing
    run(c.deps.run_pass())
    assert states(c, dep_id)["pc-a"] == s.STARTED


def test_a_result_after_the_abort_replaces_it_and_says_so(coordinator):
    c = coordinator
    session, dep_id = gone_missing(c)
    c.deps.registry.online.add("m-a")
    result = SimpleNamespace(sessionid=session, data={"state": "success", "step": "install",
                                                      "message": ""})
    assert run(c.deps.on_result(JID("pc-a.abc@d.test/res"), result)) == {"recorded": True}
    assert states(c, dep_id)["pc-a"] == s.SUCCESS
    last = run(c.deps.audit(dep_id, "m-a"))[-1]
    assert (last["label"], last["output"]) == (s.SUCCESS,
                                               "result after ABORT MISSING AGENT: ")
    # the same result sent again (the ack was lost) changes nothing and adds no line
    count = len(run(c.deps.audit(dep_id, "m-a")))
    run(c.deps.on_result(JID("pc-a.abc@d.test/res"), result))
    assert len(run(c.deps.audit(dep_id, "m-a"))) == count


def test_a_result_of_an_attempt_restarted_since_is_kept_in_the_audit_only(coordinator):
    c = coordinator
    session, dep_id = gone_missing(c)
    assert run(c.deps.restart_deployment(dep_id)) == 1
    late = SimpleNamespace(sessionid=session, data={"state": "error", "ret": 3,
                                                    "message": "step install failed"})
    assert run(c.deps.on_result(JID("pc-a.abc@d.test/res"), late)) == {"recorded": True}
    last = run(c.deps.audit(dep_id, "m-a"))[-1]
    assert (last["kind"], last["label"], last["ret"], last["session"]) == (
        "late", s.EXECUTION_ERROR, 3, session)
    assert "earlier attempt" in last["output"] and "step install failed" in last["output"]
    assert states(c, dep_id)["pc-a"] == s.PENDING  # the restart stands


def test_an_old_looking_session_from_another_machine_or_never_started_is_refused(coordinator):
    c = coordinator
    session, dep_id = gone_missing(c)
    run(c.deps.restart_deployment(dep_id))
    forged = SimpleNamespace(sessionid=session, data={"state": "success"})
    with pytest.raises(Refusal) as err:  # pc-b claims pc-a's earlier attempt
        run(c.deps.on_result(JID("pc-b.abc@d.test/res"), forged))
    assert err.value.code == 403
    for bogus in (dep_id + ":m-a:7", dep_id + ":m-a:x", "nothing", ":::", dep_id + "::1"):
        with pytest.raises(Refusal):  # a session nobody was ever given
            run(c.deps.on_result(JID("pc-a.abc@d.test/res"), SimpleNamespace(
                sessionid=bogus, data={"state": "success"})))
    assert states(c, dep_id)["pc-a"] == s.PENDING
