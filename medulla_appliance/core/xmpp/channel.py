"""Signed JSON envelopes (PROTOCOL.md) over XMPP chat messages, dispatched by action.

Trust never comes from the XMPP account: `trust(sender, signed)` names the public key a
sender's envelopes must verify with (or None: we do not listen to it). Only after the
signature and the replay check pass is the sender trusted enough to get an answer to a
refusal; anything before that is dropped, with one log line.
"""

import os

from twisted.internet import defer
from twisted.logger import Logger

from .. import envelope as env_mod
from ..refusals import RefusalLog
from .handlers import MessageChannel


class Refusal(Exception):
    """Raised by an action handler: answered as result.<action> with `code` as ret and
    `data` {"error", "message", **extra}."""

    def __init__(self, code, error, message, **extra):
        super().__init__(message)
        self.code, self.error, self.message, self.extra = code, error, message, extra


class EnvelopeChannel:
    """Sends and receives envelopes as `own_jid`; `handle(action, fn)` registers a handler.

    A handler is fn(sender_jid, envelope) returning (or firing with) the reply `data`
    dict, or None for no reply; it raises Refusal for an answered refusal.
    """

    log = Logger()

    def __init__(self, own_jid, private_key, clock, trust, *, rand=os.urandom):
        self.own_jid = own_jid
        self.private_key = private_key
        self.clock = clock
        self.trust = trust
        self.rand = rand
        self.messages = MessageChannel(self._receive)
        self.replay = env_mod.ReplayGuard(clock)
        self.refusals = RefusalLog(self.log, clock)
        self.handlers = {}
        self.on_heard = lambda sender: None  # told of every verified envelope

    def handle(self, action, fn):
        self.handlers[action] = fn

    def send(self, recipient, envelope):
        """Sign `envelope` for `recipient` (a JID) and send it."""
        body = env_mod.encode(envelope, self.private_key, self.own_jid.full(), recipient.full())
        self.messages.send_body(recipient, body)

    def send_new(self, recipient, action, data, **kwargs):
        """Send a new envelope with `action` and `data`; returns it (for its sessionid)."""
        envelope = env_mod.Envelope.new(action, data, now=self.clock.seconds(), rand=self.rand,
                                        **kwargs)
        self.send(recipient, envelope)
        return envelope

    def _receive(self, sender, body):
        try:
            signed = env_mod.decode(body)
        except env_mod.EnvelopeError as e:
            self.refusals.refused(sender, None, e.reason, e.message)
            return
        action = signed.envelope.action
        try:
            key = self.trust(sender, signed)
        except Refusal as e:
            self.refusals.refused(sender, action, e.error, e.message)
            return
        if key is None:
            self.refusals.refused(sender, action, "untrusted-sender",
                                  "no key is known for this sender")
            return
        try:
            env_mod.verify(signed, key, sender.full(), self.own_jid.full())
            self.replay.check(signed.envelope, sender.full())
        except env_mod.EnvelopeError as e:
            self.refusals.refused(sender, action, e.reason, e.message)
            return
        self.on_heard(sender)
        self._dispatch(sender, signed.envelope)

    def _dispatch(self, sender, envelope):
        handler = self.handlers.get(envelope.action)
        if handler is None:
            self.refusals.refused(sender, envelope.action, "unknown-action",
                                  "no handler for this action")
            if not envelope.is_result:
                self._reply(sender, envelope, 404, {"error": "unknown-action",
                                                    "message": "unknown action"})
            return
        d = defer.maybeDeferred(handler, sender, envelope)
        d.addCallback(self._answered, sender, envelope)
        d.addErrback(self._failed, sender, envelope)

    def _answered(self, data, sender, envelope):
        if data is not None and not envelope.is_result:
            self._reply(sender, envelope, 0, data)

    def _failed(self, failure, sender, envelope):
        if failure.check(Refusal):
            e = failure.value
            self.refusals.refused(sender, envelope.action, e.error, e.message)
            data = {**e.extra, "error": e.error, "message": e.message}
            if not envelope.is_result:  # results are never answered (PROTOCOL.md)
                self._reply(sender, envelope, e.code, data)
            return
        self.log.failure("handler of {action} from {sender} failed", failure,
                         action=envelope.action, sender=sender.full())
        if not envelope.is_result:
            self._reply(sender, envelope, 500, {"error": "internal",
                                                "message": "internal error"})

    def _reply(self, sender, envelope, ret, data):
        try:
            self.send(sender, envelope.reply(data, ret=ret, now=self.clock.seconds(),
                                             rand=self.rand))
        except Exception:
            self.log.failure("cannot answer {action} from {sender}",
                             action=envelope.action, sender=sender.full())
