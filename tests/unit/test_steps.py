"""The agent's step engine, driven by a task.Clock and a fake runner: what runs, in which
order, what a user sees after each step, and how a restart in the middle is told."""

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from medulla_agent.steps import (
    INTERRUPTED,
    KILL_GRACE,
    MAX_EXECUTED,
    OUTPUT_TAIL,
    RESTART_WAIT,
    WATCHDOG_SLACK,
    StateError,
    StepEngine,
    StepTimedOut,
)
from medulla_appliance.packages.descriptor import parse_descriptor

HANG = "hang"


def sequence(*steps):
    return parse_descriptor({"schema": 1, "id": "p", "name": "P", "version": "1",
                             "os": ["linux"], "sequences": {"linux": {"install": list(steps)}}}
                            ).sequences["linux"]["install"]


def cmd(label, **extra):
    return dict({"type": "command", "label": label, "argv": [label]}, **extra)


class FakeRunner:
    """Answers each step by its label (argv[0], or the script body): a list of answers,
    each (code, output), an exception to raise, a Failure-making exception class instance
    wrapped in defer.fail, or HANG (a Deferred that never fires by itself)."""

    def __init__(self, **answers):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.calls, self.envs, self.cancelled, self.pending = [], [], [], []

    def run_script(self, interpreter, body, env, timeout):
        return self._answer(body, env)

    def run_command(self, argv, env, timeout):
        return self._answer(argv[0], env)

    def reboot(self):
        return self._answer("reboot", {})

    def restart_agent(self):
        return self._answer("restart_agent", {})

    def _answer(self, key, env):
        self.calls.append(key)
        self.envs.append(env)
        queue = self.answers.get(key, [(0, b"")])
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if answer == HANG:
            d = defer.Deferred(lambda d: self.cancelled.append(key))
            self.pending.append(d)
            return d
        if isinstance(answer, defer.Deferred):
            return answer
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Run:
    """An engine with everything it reports recorded."""

    def __init__(self, steps, runner=None, state=None, env=None, persist=True):
        self.clock = Clock()
        self.runner = runner or FakeRunner()
        self.progress, self.done, self.saved = [], [], []
        self.engine = StepEngine(steps, self.runner, self.clock, self._progress, self._done,
                                 state=state, env=env,
                                 persist=self.saved.append if persist else None)

    def _progress(self, label, kind, ok, ret, output):
        self.progress.append((label, kind, ok, ret, output))

    def _done(self, state, label, ret):
        self.done.append((state, label, ret))

    def start(self):
        self.engine.start()
        return self

    def restart(self, runner=None):
        """A new agent, built from the last state saved (through JSON, as on disk)."""
        return Run(self.engine.steps, runner or self.runner,
                   state=json.loads(json.dumps(self.saved[-1]))).start()

    def idle(self):
        return self.clock.getDelayedCalls() == []


def test_steps_run_in_order_to_success():
    run = Run(sequence(cmd("one"), cmd("two"))).start()
    assert run.runner.calls == ["one", "two"]
    assert run.progress == [("one", "command", True, 0, ""), ("two", "command", True, 0, "")]
    assert run.done == [("success", "two", 0)] and run.idle()


def test_a_failing_script_ends_in_error_with_its_output():
    steps = sequence({"type": "script", "label": "install", "body": "install"}, cmd("after"))
    run = Run(steps, FakeRunner(install=[(2, b"E: unable to locate package\n")])).start()
    assert run.runner.calls == ["install"]
    assert run.progress == [("install", "script", False, 2, "E: unable to locate package\n")]
    assert run.done == [("error", "install", 2)]


def test_an_unaccepted_exit_never_flows_on_even_without_on_error():
    run = Run(sequence(cmd("one"), cmd("two")), FakeRunner(one=[(1, b"")])).start()
    assert run.runner.calls == ["one"] and run.done == [("error", "one", 1)]


def test_accepted_codes_count_as_success():
    steps = sequence(cmd("msi", accept_codes=[0, 3010]), cmd("next"))
    run = Run(steps, FakeRunner(msi=[(3010, b"reboot needed")])).start()
    assert run.progress[0] == ("msi", "command", True, 3010, "reboot needed")
    assert run.runner.calls == ["msi", "next"] and run.done == [("success", "next", 0)]


def test_branches_on_error_and_exit_rules_first_match_wins():
    steps = sequence(
        cmd("probe", on_exit=[{"min": 100, "max": 199, "goto": "retry"},
                              {"min": 1, "negate": True, "goto": "fallback"}],
            on_error="cleanup"),
        cmd("retry", on_success="END_SUCCESS"),
        cmd("fallback", on_success="END_SUCCESS"),
        cmd("cleanup", on_success="failed"),
        {"type": "end_error", "label": "failed"})
    assert Run(steps, FakeRunner(probe=[(150, b"")])).start().runner.calls == ["probe", "retry"]
    for code in (0, -5):
        assert Run(steps, FakeRunner(probe=[(code, b"")])).start().runner.calls == [
            "probe", "fallback"]
    run = Run(steps, FakeRunner(probe=[(7, b"")])).start()
    assert run.runner.calls == ["probe", "cleanup"] and run.done == [("error", "cleanup", 0)]


def test_set_env_is_seen_by_later_steps_over_the_base_env():
    steps = sequence({"type": "set_env", "env": {"MODE": "quiet", "BASE": "override"}},
                     cmd("one", accept_codes=[3]),
                     {"type": "set_env", "env": {"MODE": "loud"}}, cmd("two"))
    runner = FakeRunner(one=[(3, b"three\n")])
    run = Run(steps, runner, env={"BASE": "base", "MEDULLA_HOSTNAME": "pc-01"}).start()
    first, second = runner.envs
    assert first == {"BASE": "override", "MEDULLA_HOSTNAME": "pc-01", "MODE": "quiet"}
    assert second["MODE"] == "loud" and second["MEDULLA_PREV_RET"] == "3"
    assert second["MEDULLA_PREV_OUTPUT"] == "three\n"
    assert [p[1] for p in run.progress] == ["set_env", "command", "set_env", "command"]


def test_wait_waits_on_the_clock():
    run = Run(sequence({"type": "wait", "label": "pause", "seconds": 10}, cmd("after"))).start()
    run.clock.advance(9.9)
    assert run.runner.calls == [] and run.done == []
    run.clock.advance(0.1)
    assert run.runner.calls == ["after"] and run.done == [("success", "after", 0)]
    assert run.progress[0] == ("pause", "wait", True, 0, "") and run.idle()


def test_a_timeout_is_an_error_with_code_minus_one():
    runner = FakeRunner(slow=[defer.fail(StepTimedOut(5, b"partial output"))])
    run = Run(sequence(cmd("slow", timeout=5)), runner).start()
    assert run.progress == [("slow", "command", False, -1,
                             "partial output\ntimed out after 5s")]
    assert run.done == [("error", "slow", -1)]


def test_a_runner_that_never_answers_is_given_up_after_its_timeout():
    run = Run(sequence(cmd("stuck", timeout=5), cmd("after")), FakeRunner(stuck=[HANG])).start()
    run.clock.advance(5 + KILL_GRACE + WATCHDOG_SLACK - 0.1)
    assert run.done == []
    run.clock.advance(0.1)
    assert run.progress == [("stuck", "command", False, -1,
                             "timed out after 5s (the runner did not stop it)")]
    assert run.runner.cancelled == ["stuck"] and run.done == [("error", "stuck", -1)]
    assert run.runner.calls == ["stuck"] and run.idle()


@pytest.mark.parametrize("answer, message", [
    (OSError("no such interpreter"), "runner error: no such interpreter"),
    (defer.fail(RuntimeError("boom")), "runner error: boom"),
    (("not", "a", "result"), "runner error: bad result"),
    (("x", b""), "runner error: bad result"),
])
def test_a_runner_failure_is_a_step_error_not_a_crash(answer, message):
    run = Run(sequence(cmd("one"), cmd("two")), FakeRunner(one=[answer])).start()
    (progress,) = run.progress
    assert progress[:4] == ("one", "command", False, -1) and progress[4].startswith(message)
    assert run.done == [("error", "one", -1)]
    run.clock.advance(10 ** 6)
    assert run.done == [("error", "one", -1)]


def test_an_endless_loop_stops_after_a_thousand_steps():
    run = Run(sequence(cmd("again", on_success="again"))).start()
    assert len(run.runner.calls) == MAX_EXECUTED
    assert run.progress[-1][4].startswith("step loop: 1000 steps executed")
    assert run.done == [("error", "again", -1)]


def test_a_thousand_instant_steps_do_not_recurse():
    steps = sequence(*[cmd("s%d" % i) for i in range(999)])
    run = Run(steps).start()
    assert len(run.runner.calls) == 999 and run.done == [("success", "s998", 0)]


def test_state_is_saved_before_each_step_and_is_json():
    run = Run(sequence(cmd("one"), cmd("two"))).start()
    assert [(s["current"], s["running"]) for s in run.saved] == [("one", True), ("two", True),
                                                                 (None, False)]
    assert run.saved[1]["finished"] == [["one", True, 0]]
    assert run.saved[-1]["done"] == ["success", "two", 0]
    json.dumps(run.saved)


def test_a_step_running_when_the_agent_died_is_reported_interrupted_not_rerun():
    steps = sequence(cmd("install", on_error="cleanup"), cmd("after"), cmd("cleanup"))
    first = Run(steps, FakeRunner(install=[HANG])).start()
    assert first.saved[-1]["current"] == "install" and first.saved[-1]["running"]
    # The agent dies here; a new one starts from the saved state.
    again = first.restart(FakeRunner())
    assert again.runner.calls == ["cleanup"]
    assert again.progress[0] == ("install", "command", False, -1, INTERRUPTED)
    assert again.done == [("success", "cleanup", 0)]


def test_a_reboot_step_carries_on_at_on_success_after_the_reboot():
    steps = sequence(cmd("install"), {"type": "reboot", "label": "reboot"}, cmd("verify"))
    run = Run(steps).start()
    assert run.runner.calls == ["install", "reboot"] and run.done == []
    assert run.saved[-1]["current"] == "reboot"
    again = run.restart(FakeRunner())
    assert again.progress == [("reboot", "reboot", True, 0, ""),
                              ("verify", "command", True, 0, "")]
    assert again.runner.calls == ["verify"] and again.done == [("success", "verify", 0)]


def test_restart_agent_resumes_the_same_way():
    steps = sequence({"type": "restart_agent", "label": "restart"}, cmd("after"))
    run = Run(steps).start()
    assert run.runner.calls == ["restart_agent"] and run.done == []
    assert run.restart(FakeRunner()).done == [("success", "after", 0)]


def test_a_reboot_that_never_comes_is_an_error():
    run = Run(sequence({"type": "reboot", "label": "reboot"}, cmd("after"))).start()
    run.clock.advance(RESTART_WAIT)
    assert run.progress[0][:4] == ("reboot", "reboot", False, -1)
    assert "nothing happened" in run.progress[0][4]
    assert run.done == [("error", "reboot", -1)] and run.idle()


def test_a_reboot_request_that_never_answers_is_an_error_too():
    run = Run(sequence({"type": "reboot", "label": "reboot"}), FakeRunner(reboot=[HANG]))
    run.start()
    run.clock.advance(RESTART_WAIT)
    assert run.done == [("error", "reboot", -1)] and run.runner.cancelled == ["reboot"]
    assert run.idle()


def test_a_refused_reboot_request_follows_on_error():
    steps = sequence({"type": "reboot", "label": "reboot", "on_error": "tell"}, cmd("tell"))
    run = Run(steps, FakeRunner(reboot=[(1, b"Access denied")])).start()
    assert run.progress[0] == ("reboot", "reboot", False, 1, "Access denied")
    assert run.runner.calls == ["reboot", "tell"]


def test_an_interrupted_wait_is_simply_waited_again():
    steps = sequence({"type": "wait", "label": "pause", "seconds": 30}, cmd("after"))
    run = Run(steps).start()
    run.clock.advance(20)
    again = run.restart()
    again.clock.advance(29)
    assert again.done == []
    again.clock.advance(1)
    assert again.done == [("success", "after", 0)]


def test_a_finished_state_reports_its_end_again_and_runs_nothing():
    run = Run(sequence(cmd("one"))).start()
    again = run.restart(FakeRunner())
    assert again.runner.calls == [] and again.done == [("success", "one", 0)]


def test_a_state_that_does_not_fit_is_refused():
    steps = sequence(cmd("one"))
    for state in ({"v": 2}, {"v": 1}, "x", {"v": 1, "current": "ghost", "running": True,
                                            "env": {}, "finished": [], "executed": 0,
                                            "last": [None, 0], "done": None}):
        with pytest.raises(StateError):
            StepEngine(steps, FakeRunner(), Clock(), print, print, state=state)


def test_the_loop_guard_survives_a_restart():
    steps = sequence(cmd("again", on_success="again", on_error="again"))
    run = Run(steps, FakeRunner(again=[(0, b"")] * 10 + [HANG])).start()
    again = run.restart(FakeRunner())
    assert len(run.runner.calls) + len(again.runner.calls) == MAX_EXECUTED
    assert again.done == [("error", "again", -1)]


def test_a_step_is_not_run_when_its_state_cannot_be_saved():
    runner = FakeRunner()

    def persist(state):
        if state["current"] == "two":
            raise OSError("disk full")

    progress, done = [], []
    StepEngine(sequence(cmd("one"), cmd("two")), runner, Clock(),
               lambda *a: progress.append(a), lambda *a: done.append(a),
               persist=persist).start()
    assert runner.calls == ["one"]
    assert progress[-1][:4] == ("two", "command", False, -1) and "disk full" in progress[-1][4]
    assert done == [("error", "two", -1)]


def test_stop_cancels_the_running_step():
    run = Run(sequence(cmd("long"), cmd("after")), FakeRunner(long=[HANG])).start()
    run.engine.stop("cancelled by the user")
    assert run.runner.cancelled == ["long"]
    assert run.progress == [("long", "command", False, -1, "cancelled by the user")]
    assert run.done == [("error", "long", -1)] and run.idle()
    run.engine.stop()
    assert len(run.done) == 1


def test_output_keeps_the_last_64_kib_decoded_with_replacement():
    output = b"\xff" + b"a" * (2 * OUTPUT_TAIL) + "é".encode() + b"\xfe"
    run = Run(sequence(cmd("noisy")), FakeRunner(noisy=[(0, output)])).start()
    text = run.progress[0][4]
    assert text.endswith("aé\ufffd") and len(text.encode()) <= OUTPUT_TAIL + 4


def test_a_failing_progress_callback_does_not_stop_the_run():
    runner, done = FakeRunner(), []

    def progress(*args):
        raise ValueError("bug in the caller")

    StepEngine(sequence(cmd("one"), cmd("two")), runner, Clock(), progress,
               lambda *a: done.append(a)).start()
    assert runner.calls == ["one", "two"] and done == [("success", "two", 0)]


def test_an_engine_starts_once():
    run = Run(sequence(cmd("one"))).start()
    with pytest.raises(RuntimeError):
        run.engine.start()


def test_ending_on_an_end_step_without_running_anything():
    run = Run(sequence({"type": "end_error", "label": "nope"})).start()
    assert run.done == [("error", "nope", -1)] and run.progress == []
