"""The agent's enrolment for one XMPP session, as a clock-driven state machine:
ask the assessor which relay to use, then register, resending when no answer comes,
waiting as long as the master says when it is busy (ret 429), backing off on refusals.
No reactor, no sockets: `send(action, data)` and the clock are given to it."""

import random

from twisted.logger import Logger

ANSWER_TIMEOUT = 20.0
REFUSED_RETRY = 300.0

IDLE, ASSESSING, REGISTERING, REGISTERED = "idle", "assessing", "registering", "registered"


class Enrolment:
    """States: idle -> assessing -> registering -> registered (per session).

    `on_assessment(data)` returns True when the agent leaves for another server (the
    session ends there); `on_registered(data)` is told the master's answer.
    """

    log = Logger()

    def __init__(self, clock, send, on_assessment, on_registered, *, rand=random.random):
        self.clock = clock
        self.send = send
        self.on_assessment = on_assessment
        self.on_registered = on_registered
        self.rand = rand
        self.state = IDLE
        self._timer = None
        self._held = False  # waiting out a retry_after or a refusal: don't hurry
        self.attempts = 0

    def session_started(self):
        self.attempts = 0
        self._ask(ASSESSING)

    def session_ended(self):
        self._cancel()
        self.state = IDLE

    def master_available(self):
        """The master came (back) online: a pending request need not wait its timer."""
        if self.state in (ASSESSING, REGISTERING) and not self._held:
            self._ask(self.state)

    def result(self, action, ret, data):
        """A verified answer from the master."""
        if action == "result.agent.assess" and self.state == ASSESSING:
            self._cancel()
            if ret != 0:
                return self._refused(ret, data)
            if self.on_assessment(data):
                self.state = IDLE
                return None
            return self._ask(REGISTERING)
        if action == "result.agent.register" and self.state == REGISTERING:
            self._cancel()
            if ret == 0:
                self.state = REGISTERED
                return self.on_registered(data)
            return self._refused(ret, data)
        return None

    def _refused(self, ret, data):
        retry_after = data.get("retry_after") if isinstance(data, dict) else None
        if ret == 429 and isinstance(retry_after, (int, float)) and 0 < retry_after < 3600:
            delay = float(retry_after)
            self.log.info("master busy: registering again in {delay:.1f}s", delay=delay)
        else:
            delay = REFUSED_RETRY * (0.5 + self.rand() / 2)
            self.log.error("master refused {state}: {ret} {error}: {message}; retrying in "
                           "{delay:.0f}s", state=self.state, ret=ret,
                           error=str(data.get("error", ""))[:64],
                           message=str(data.get("message", ""))[:300], delay=delay)
        self._held = True
        self._schedule(delay, lambda: self._ask(self.state))

    def _ask(self, state):
        self._cancel()
        self._held = False
        self.state = state
        self.attempts += 1
        self.send("agent.assess" if state == ASSESSING else "agent.register")
        # Resend if nothing comes back; the timeout grows and is jittered.
        timeout = min(ANSWER_TIMEOUT * min(self.attempts, 6), 120.0) * (0.75 + self.rand() / 2)
        self._schedule(timeout, lambda: self._ask(self.state))

    def _schedule(self, delay, fn):
        self._cancel()
        self._timer = self.clock.callLater(delay, fn)

    def _cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
