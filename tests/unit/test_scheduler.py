"""Which deployment target starts, waits, retries or expires, and when."""

from medulla_appliance.master.logic import scheduler as s

WINDOW = s.Window(start_at=100, end_at=200, max_per_relay=2, retries=1)


def target(uuid, state=s.PENDING, attempts=0, relay="master"):
    return s.Target(uuid, state, attempts, relay)


def states(decisions):
    return {(d.uuid, d.state, d.start) for d in decisions}


def test_nothing_starts_before_the_window():
    assert s.decide(50, WINDOW, [target("a")], {"a"}, {"master"}) == []


def test_online_targets_start_within_the_relay_limit():
    targets = [target(u) for u in "abc"]
    got = s.decide(150, WINDOW, targets, {"a", "b", "c"}, {"master"})
    assert [d for d in got if d.start] == [s.Decision("a", s.STARTED, True),
                                            s.Decision("b", s.STARTED, True)]
    assert ("c", s.PENDING, False) not in states(got)  # unchanged: no decision at all
    assert len(got) == 2


def test_the_limit_counts_deployments_already_running_on_the_relay():
    got = s.decide(150, WINDOW, [target("a")], {"a"}, {"master"}, busy={"master": 2})
    assert got == []


def test_the_limit_is_per_relay():
    targets = [target("a"), target("b"), target("c", relay="lyon")]
    got = s.decide(150, WINDOW, targets, {"a", "b", "c"}, {"master", "lyon"},
                   busy={"master": 1})
    assert {d.uuid for d in got if d.start} == {"a", "c"}


def test_offline_target_waits_for_its_machine():
    assert s.decide(150, WINDOW, [target("a")], set(), {"master"}) == [
        s.Decision("a", s.WAITING_ONLINE)]
    # already waiting: no new decision, no new audit line
    assert s.decide(150, WINDOW, [target("a", s.WAITING_ONLINE)], set(), {"master"}) == []


def test_target_waits_until_its_relay_has_the_package():
    got = s.decide(150, WINDOW, [target("a", relay="lyon")], {"a"}, {"master"})
    assert got == [s.Decision("a", s.WAITING_SYNC)]
    got = s.decide(151, WINDOW, [target("a", s.WAITING_SYNC, relay="lyon")], {"a"},
                   {"master", "lyon"})
    assert got == [s.Decision("a", s.STARTED, True)]


def test_waiting_targets_expire_at_the_end_of_the_window():
    targets = [target("a", s.WAITING_ONLINE), target("b"), target("c", s.STARTED),
               target("d", s.SUCCESS)]
    got = s.decide(200, WINDOW, targets, set(), {"master"})
    assert states(got) == {("a", s.EXPIRED, False), ("b", s.EXPIRED, False)}


def test_a_failed_transfer_is_retried_inside_the_window_only():
    failed = target("a", s.TRANSFER_FAILED, attempts=1)
    assert s.decide(150, WINDOW, [failed], {"a"}, {"master"}) == [
        s.Decision("a", s.STARTED, True)]
    assert s.decide(250, WINDOW, [failed], {"a"}, {"master"}) == []  # the failure stands
    spent = target("a", s.TRANSFER_FAILED, attempts=2)  # 1 try + 1 retry used
    assert s.decide(150, WINDOW, [spent], {"a"}, {"master"}) == []


def test_an_execution_error_is_final():
    failed = target("a", s.EXECUTION_ERROR, attempts=1)
    assert s.decide(150, WINDOW, [failed], {"a"}, {"master"}) == []


def test_a_stopped_deployment_stops_its_waiting_targets_and_starts_nothing():
    stopped = s.Window(100, 200, 2, 1, stopped=True)
    targets = [target("a"), target("b", s.STARTED), target("c", s.TRANSFER_FAILED, 1)]
    assert s.decide(150, stopped, targets, {"a", "b", "c"}, {"master"}) == [
        s.Decision("a", s.STOPPED)]


def test_agent_result_words_map_to_the_states_admins_know():
    assert s.outcome_state("success") == s.SUCCESS == "DEPLOYMENT SUCCESS"
    assert s.outcome_state("error") == "ABORT PACKAGE EXECUTION ERROR"
    assert s.outcome_state("transfer-failed") == "ABORT TRANSFER FAILED"
    assert s.outcome_state("hash-invalid") == "ABORT HASH INVALID"
    assert s.outcome_state("stopped") == "ABORT DEPLOYMENT CANCELLED BY USER"
    # anything unknown from an agent is an error, never a success
    assert s.outcome_state("succes") == s.EXECUTION_ERROR
