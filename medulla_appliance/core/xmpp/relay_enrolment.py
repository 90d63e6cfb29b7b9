"""A relay host daemon's enrolment with the master, once per XMPP session: send
``relay.register`` and wait for the master's answer before anything else is said.

The registration carries the relay's name (``relay-NAME`` of the JID), the daemon and its
version, the relay's public key and ``psk_mac``, an HMAC-SHA256 of the rest made with the
installation's enrolment key (PROTOCOL.md "Keys and enrolment", as agents do). A refusal
(bad enrolment key, another key pinned for this relay) is logged once, clearly, and the
registration is tried again after a delay that grows up to ``MAX_RETRY`` seconds; no
answer is retried the same way. No reactor, no sockets: ``request`` and the clock are
given to it.
"""

import random

from twisted.logger import Logger

from .. import keys
from .link_errors import LinkDown, LinkRefused, LinkTimeout

ACTION = "relay.register"
ANSWER_TIMEOUT = 20.0
FIRST_RETRY = 5.0
MAX_RETRY = 600.0
RELAY_PREFIX = "relay-"


def relay_name(jid):
    """NAME of a ``relay-NAME@DOMAIN`` JID; ValueError for any other."""
    user = jid.user or ""
    if not user.startswith(RELAY_PREFIX) or len(user) == len(RELAY_PREFIX):
        raise ValueError(f"[xmpp] jid {jid.full()}: a relay host's daemons log in as "
                         "relay-NAME@DOMAIN/DAEMON (or as the master's account on the "
                         "master host)")
    return user[len(RELAY_PREFIX):]


def registration(name, daemon, version, private_key, enrolment_key):
    """The data of a ``relay.register`` envelope, MACed with ``enrolment_key``."""
    data = {"name": name, "daemon": daemon, "version": version,
            "public_key": keys.public_key_text(private_key)}
    data["psk_mac"] = keys.registration_mac(enrolment_key, data)
    return data


class RelayEnrolment:
    """``start()`` at each session start; ``on_enrolled(answer)`` once the master
    accepted; ``stop()`` when the session ends. ``request(action, data, timeout)`` is
    the link's request (a Deferred of the answer's data, or LinkRefused/LinkTimeout/
    LinkDown)."""

    log = Logger()

    def __init__(self, clock, request, data, on_enrolled, *, rand=random.random):
        self.clock, self.request, self.data = clock, request, data
        self.on_enrolled = on_enrolled
        self.rand = rand
        self.enrolled = False
        self.attempts = 0
        self.delay = 0.0
        self._pending = None
        self._timer = None
        self._last_problem = None

    def start(self):
        self.stop()
        self.attempts = 0
        self.delay = 0.0
        self._send()

    def stop(self):
        self.enrolled = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _send(self):
        self._timer = None
        self.attempts += 1
        d = self._pending = self.request(ACTION, self.data, ANSWER_TIMEOUT)
        d.addCallbacks(self._accepted, self._failed, callbackArgs=(d,), errbackArgs=(d,))

    def _accepted(self, answer, d):
        if d is not self._pending:
            return
        self._pending = None
        self.enrolled = True
        self._last_problem = None
        self.log.info("enrolled with the master as relay {name} (key {fingerprint})",
                      name=self.data["name"], fingerprint=answer.get("key_fingerprint", "?")
                      if isinstance(answer, dict) else "?")
        self.on_enrolled(answer)

    def _failed(self, failure, d):
        if d is not self._pending:
            return None  # cancelled by stop(): the session is gone
        self._pending = None
        if failure.check(LinkDown):
            return None  # the session went away; start() comes with the next one
        self.delay = min(MAX_RETRY, max(FIRST_RETRY, self.delay * 2))
        wait = self.delay * (0.75 + self.rand() / 2)
        if failure.check(LinkRefused):
            problem = (failure.value.code, failure.value.error)
            what = f"the master refused relay {self.data['name']}'s enrolment: {failure.value}"
        elif failure.check(LinkTimeout):
            problem = ("timeout",)
            what = f"the master did not answer relay.register ({failure.value})"
        else:
            problem = ("error", failure.type)
            what = f"relay.register failed: {failure.getErrorMessage()}"
        if problem != self._last_problem:
            self._last_problem = problem  # once per reason, not at every retry
            hint = _HINTS.get(problem[-1], "")
            self.log.error("{what}{hint}; nothing is sent to the master until it accepts; "
                           "trying again in {wait:.0f}s, then less and less often",
                           what=what, hint=hint, wait=wait)
        self._timer = self.clock.callLater(wait, self._send)
        return None


_HINTS = {
    "bad-enrolment-key": " (check [keys] enrolment_key_file: the master's enrolment key)",
    "key-mismatch": " (this relay was enrolled with another key: if this host was "
                    "reinstalled, an admin runs 'medullactl relay reset-key NAME')",
}
