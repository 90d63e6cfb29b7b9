"""The step engine: runs one sequence of a package's descriptor as a clock-driven state
machine. No reactor, no processes: a `runner` executes steps, `clock` times them.

Runner interface (each call returns a value or a Deferred):
    run_script(interpreter, body, env, timeout) -> (exit_code, output_bytes)
    run_command(argv, env, timeout)             -> (exit_code, output_bytes)
    reboot() / restart_agent()                  -> (exit_code, output_bytes) of the request
A runner that stops a process at its timeout fails with `StepTimedOut`.

Honest resumption: `persist(snapshot)` is called before each step runs, so after an agent
restart (or a reboot) the engine, built again with `state=`, knows which step was running.
That step is reported as an error, "interrupted by an agent restart", and not run again,
except `reboot` and `restart_agent`, whose restart was the point: they carry on at their
`on_success`. `wait` and `set_env` have no side effects and simply run again.
"""

from typing import NamedTuple

from twisted.internet import defer, task
from twisted.logger import Logger

from medulla_appliance.packages.descriptor import (
    BUILTIN_LABELS,
    END_SUCCESS,
    PREV_OUTPUT_VARIABLE,
    PREV_RET_VARIABLE,
)

MAX_EXECUTED = 1000
FINISHED_KEPT = 100        # the last finished steps kept in the state (a loop repeats them)
OUTPUT_TAIL = 64 * 1024
PREV_OUTPUT_CHARS = 4096
KILL_GRACE = 10.0          # the runner's SIGTERM -> SIGKILL delay
WATCHDOG_SLACK = 30.0      # past timeout + KILL_GRACE, the runner itself is stuck
RESTART_WAIT = 600.0       # a reboot/restart requested but this agent still alive
STATE_VERSION = 1
SUCCESS, ERROR = "success", "error"
INTERRUPTED = "interrupted by an agent restart"
_RESTARTS = ("reboot", "restart_agent")
_RERUNNABLE = ("wait", "set_env")


class StepTimedOut(Exception):
    """The runner stopped a step at its timeout; `output` is what it printed until then."""

    def __init__(self, timeout, output=b""):
        super().__init__("timed out after %ss" % _seconds(timeout))
        self.timeout, self.output = timeout, output


class StateError(ValueError):
    """A saved engine state that does not fit this sequence."""


class Outcome(NamedTuple):
    ok: bool
    ret: int
    output: str
    exited: bool = False    # `ret` is a real exit code (on_exit rules apply)


def _seconds(value):
    return ("%g" % value) if isinstance(value, float) else str(value)


def _tail(output):
    if isinstance(output, str):
        output = output.encode("utf-8", "replace")
    return bytes(output[-OUTPUT_TAIL:]).decode("utf-8", "replace")


class StepEngine:
    """Runs `sequence_steps` (a tuple of descriptor `Step`s) to `on_done(state, last_label,
    last_ret)`, calling `on_progress(label, type, ok, ret, output_tail)` after each step.

    `env`: variables every step gets (the agent's MEDULLA_* values), under the ones
    `set_env` steps add. `persist(snapshot)`: called before each step; if it raises, the run
    ends in error rather than run a step it could not account for after a restart.
    """

    log = Logger()

    def __init__(self, sequence_steps, runner, clock, on_progress, on_done, *, state=None,
                 env=None, persist=None):
        self.steps = tuple(sequence_steps)
        self.by_label = {step.label: step for step in self.steps}
        self.runner, self.clock = runner, clock
        self.on_progress, self.on_done = on_progress, on_done
        self.base_env = dict(env or {})
        self.persist = persist
        self._env, self._finished, self._executed = {}, [], 0
        self._current = self.steps[0].label if self.steps else END_SUCCESS
        self._running, self._done, self._last = False, None, (None, 0)
        self._token = self._timer = self._inflight = self._pending = None
        self._looping = self._started = False
        if state is not None:
            self._restore(state)

    # -- public -------------------------------------------------------------------------

    def start(self):
        """Run from the first step, or carry on from the `state` given at construction."""
        if self._started:
            raise RuntimeError("this engine has already started")
        self._started = True
        if self._done is not None:
            self.on_done(*self._done)
            return
        if self._running:
            step = self.by_label[self._current]
            if step.type in _RESTARTS:
                self._complete(step, Outcome(True, 0, ""))
            elif step.type in _RERUNNABLE:
                self._running = False
            else:
                self._complete(step, Outcome(False, -1, INTERRUPTED))
        self._loop()

    def stop(self, reason="stopped"):
        """End the run now, in error; the running step is cancelled (its process killed)."""
        if self._done is not None or not self._started:
            return
        step = self.by_label.get(self._current)
        inflight = self._inflight
        self._token = self._inflight = None
        self._cancel_timer()
        if step is not None and self._running:
            self._running = False
            self._last = (step.label, -1)
            self._report(step, Outcome(False, -1, reason))
        self._finish(ERROR)
        if inflight is not None:
            inflight.cancel()

    def snapshot(self):
        """The engine's state as JSON-able data, for `StepEngine(..., state=)`."""
        return {"v": STATE_VERSION, "current": self._current, "running": self._running,
                "env": dict(self._env), "finished": [list(f) for f in self._finished],
                "executed": self._executed, "last": list(self._last),
                "done": list(self._done) if self._done is not None else None}

    # -- the loop -----------------------------------------------------------------------

    def _loop(self):
        """Run steps until one has to wait; steps that finish at once do not recurse."""
        if self._looping:
            return
        self._looping = True
        try:
            while self._done is None:
                label = self._current
                step = self.by_label.get(label)
                if label in BUILTIN_LABELS or step.type in ("end_success", "end_error"):
                    ended = label == END_SUCCESS or (step is not None
                                                     and step.type == "end_success")
                    self._finish(SUCCESS if ended else ERROR, end_label=label)
                    return
                if self._executed >= MAX_EXECUTED:
                    self._report(step, Outcome(False, -1, "step loop: %d steps executed, at "
                                                          "most %d" % (self._executed,
                                                                       MAX_EXECUTED)))
                    self._last = (label, -1)
                    self._finish(ERROR)
                    return
                self._executed += 1
                self._running = True
                if not self._save():
                    return
                token = self._token = object()
                self._pending = None
                self._execute(step, token).addCallback(self._arrived, token, step)
                if self._pending is None:
                    return          # the step runs on; _arrived carries on later
                outcome, self._pending = self._pending, None
                self._complete(step, outcome)
        finally:
            self._looping = False

    def _arrived(self, outcome, token, step):
        if token is not self._token:
            return None             # stale: the watchdog or stop() already decided
        self._token = self._inflight = None
        self._cancel_timer()
        if self._looping:
            self._pending = outcome
            return None
        self._complete(step, outcome)
        self._loop()
        return None

    def _complete(self, step, outcome):
        self._running = False
        self._finished.append([step.label, outcome.ok, outcome.ret])
        del self._finished[:-FINISHED_KEPT]
        self._last = (step.label, outcome.ret)
        if step.type in ("script", "command"):
            self._env[PREV_RET_VARIABLE] = str(outcome.ret)
            self._env[PREV_OUTPUT_VARIABLE] = outcome.output[-PREV_OUTPUT_CHARS:].replace(
                "\x00", "")
        self._current = self._next(step, outcome)
        self._report(step, outcome)

    @staticmethod
    def _next(step, outcome):
        if outcome.exited:
            for rule in step.on_exit:
                if rule.matches(outcome.ret):
                    return rule.goto
        return step.on_success if outcome.ok else step.on_error

    def _finish(self, state, end_label=None):
        label, ret = self._last
        if label is None:
            label, ret = end_label, (0 if state == SUCCESS else -1)
        self._done = (state, label, ret)
        self._current, self._running = None, False
        self._save(final=True)
        try:
            self.on_done(state, label, ret)
        except Exception:
            self.log.failure("on_done failed")

    # -- executing one step -------------------------------------------------------------

    def _execute(self, step, token):
        """A Deferred that fires with the step's Outcome; it never fails."""
        if step.type == "set_env":
            self._env.update(step.env)
            return defer.succeed(Outcome(True, 0, ""))
        if step.type == "wait":
            d = task.deferLater(self.clock, step.seconds, Outcome, True, 0, "")
            self._inflight = d
            return d.addErrback(self._failed, step)
        env = dict(self.base_env, **self._env)
        if step.type == "script":
            d = defer.maybeDeferred(self.runner.run_script, step.interpreter, step.body, env,
                                    step.timeout)
        elif step.type == "command":
            d = defer.maybeDeferred(self.runner.run_command, list(step.argv), env,
                                    step.timeout)
        else:
            d = defer.maybeDeferred(getattr(self.runner, step.type))
        self._inflight = d
        if step.type in _RESTARTS:
            # One deadline for the request and for the restart it should bring.
            self._timer = self.clock.callLater(
                RESTART_WAIT, self._watchdog, token, step, "%s requested but nothing happened "
                "within %ss" % (step.type, _seconds(RESTART_WAIT)))
            d.addCallback(self._restart_requested, step)
            d.addErrback(self._failed, step)
            return d
        self._timer = self.clock.callLater(step.timeout + KILL_GRACE + WATCHDOG_SLACK,
                                           self._watchdog, token, step)
        d.addCallbacks(self._exited, self._failed, callbackArgs=(step,), errbackArgs=(step,))
        return d

    def _exited(self, result, step, accept_codes=None):
        try:
            code, output = result
            code = int(code)
        except (TypeError, ValueError) as e:
            return Outcome(False, -1, "runner error: bad result %s (%s)" % (repr(result)[:100],
                                                                          e))
        accepted = code in (step.accept_codes if accept_codes is None else accept_codes)
        return Outcome(accepted, code, _tail(output), exited=True)

    def _failed(self, failure, step):
        if failure.check(StepTimedOut):
            output = _tail(failure.value.output)
            note = "timed out after %ss" % _seconds(step.timeout)
            return Outcome(False, -1, output + ("\n" if output[-1:] not in ("", "\n") else "")
                           + note)
        if failure.check(defer.CancelledError):
            return Outcome(False, -1, "cancelled")
        self.log.failure("runner failed on step {label}", failure, label=step.label)
        return Outcome(False, -1, "runner error: %s" % failure.getErrorMessage()[:500])

    def _restart_requested(self, result, step):
        outcome = self._exited(result, step, accept_codes=(0,))
        if not outcome.ok:
            return outcome
        # The machine or the agent is going down: nothing more runs in this process. The
        # state saved before this step makes the next agent carry on at on_success.
        self.log.info("{type} requested by step {label}", type=step.type, label=step.label)
        return defer.Deferred()

    def _watchdog(self, token, step, message=None):
        self._timer = None
        inflight = self._inflight
        if message is None:
            message = "timed out after %ss (the runner did not stop it)" % _seconds(
                step.timeout)
            self.log.error("step {label}: the runner did not answer after its timeout",
                           label=step.label)
        self._arrived(Outcome(False, -1, message), token, step)
        if inflight is not None:
            inflight.cancel()

    # -- helpers ------------------------------------------------------------------------

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _report(self, step, outcome):
        try:
            self.on_progress(step.label, step.type, outcome.ok, outcome.ret, outcome.output)
        except Exception:
            self.log.failure("on_progress failed for step {label}", label=step.label)

    def _save(self, final=False):
        if self.persist is None:
            return True
        try:
            self.persist(self.snapshot())
            return True
        except Exception as e:
            self.log.failure("cannot save the deployment state")
            if final:
                return False
            step = self.by_label[self._current]
            self._running = False
            self._executed -= 1
            self._report(step, Outcome(False, -1, "not run: cannot save the deployment "
                                                  "state: %s" % e))
            self._last = (step.label, -1)
            self._finish(ERROR)
            return False

    def _restore(self, state):
        try:
            if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
                raise StateError("unknown state version")
            current, done = state["current"], state["done"]
            if done is not None:
                kind, label, ret = done
                if kind not in (SUCCESS, ERROR) or not isinstance(ret, int):
                    raise StateError("bad final state")
                self._done = (kind, label, ret)
            elif current not in self.by_label and (state["running"]
                                                   or current not in BUILTIN_LABELS):
                raise StateError("no step %r in this sequence" % (current,))
            env = state["env"]
            if not isinstance(env, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise StateError("bad env")
            finished = [[str(label), bool(ok), int(ret)] for label, ok, ret in state["finished"]]
            executed, running = state["executed"], state["running"]
            if not isinstance(executed, int) or not isinstance(running, bool):
                raise StateError("bad counters")
            last_label, last_ret = state["last"]
        except StateError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise StateError("unusable saved state: %s" % e) from None
        self._current, self._running, self._env = current, running, dict(env)
        self._finished, self._executed = finished, executed
        self._last = (last_label, int(last_ret))
