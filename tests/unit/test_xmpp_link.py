"""Requests of a server-side daemon to the master: answered, refused, timed out, lost with
the session, and answers nobody waits for (late, forged sessionid) ignored."""

import pytest
from twisted.internet.task import Clock
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core import envelope as env
from medulla_appliance.core.xmpp.link import (
    LinkDown,
    LinkRefused,
    LinkTimeout,
    Requests,
    master_trust,
)

MASTER = JID("master@medulla.example/master")


class RecordingChannel:
    """The part of EnvelopeChannel that Requests uses: handle() and send_new()."""

    def __init__(self, clock):
        self.clock, self.handlers, self.sent = clock, {}, []

    def handle(self, action, fn):
        self.handlers[action] = fn

    def send_new(self, recipient, action, data, **kwargs):
        envelope = env.Envelope.new(action, data, now=self.clock.seconds(), **kwargs)
        self.sent.append((recipient, envelope))
        return envelope

    def answer(self, index, data, ret=0):
        _, request = self.sent[index]
        reply = request.reply(data, ret=ret, now=self.clock.seconds())
        return self.handlers["result." + request.action](MASTER, reply)


def outcome(d):
    results = []
    d.addBoth(results.append)
    return results


@pytest.fixture
def setup():
    clock = Clock()
    clock.advance(1_763_820_000)
    channel = RecordingChannel(clock)
    return clock, channel, Requests(channel, clock)


def test_an_answer_fires_with_its_data(setup):
    clock, channel, requests = setup
    got = outcome(requests.request(MASTER, "pxe.menu", {"mac": "52:54:00:12:34:56"}, 5))
    assert channel.sent[0][1].action == "pxe.menu"
    channel.answer(0, {"menu": "default"})
    assert got == [{"menu": "default"}]
    assert requests.pending == {}


def test_a_refusal_is_an_error_that_says_why(setup):
    clock, channel, requests = setup
    got = outcome(requests.request(MASTER, "pxe.menu", {}, 5))
    channel.answer(0, {"error": "bad-mac", "message": "not a MAC address"}, ret=400)
    assert got[0].check(LinkRefused)
    assert got[0].value.code == 400 and got[0].value.error == "bad-mac"
    assert "not a MAC address" in str(got[0].value)


def test_no_answer_in_time_is_a_timeout_and_a_late_answer_is_ignored(setup):
    clock, channel, requests = setup
    got = outcome(requests.request(MASTER, "pxe.menu", {}, 5))
    clock.advance(4.9)
    assert got == []
    clock.advance(0.2)
    assert got[0].check(LinkTimeout)
    assert channel.answer(0, {"menu": "late"}) is None  # nobody waits: dropped, no crash
    assert len(got) == 1


def test_an_answer_to_a_session_nobody_asked_is_ignored(setup):
    clock, channel, requests = setup
    got = outcome(requests.request(MASTER, "pxe.menu", {}, 5))
    forged = env.Envelope.new("result.pxe.menu", {"menu": "evil"}, now=clock.seconds())
    assert channel.handlers["result.pxe.menu"](MASTER, forged) is None
    assert got == []
    channel.answer(0, {"menu": "real"})
    assert got == [{"menu": "real"}]


def test_losing_the_session_fails_every_pending_request(setup):
    clock, channel, requests = setup
    first = outcome(requests.request(MASTER, "pxe.menu", {}, 5))
    second = outcome(requests.request(MASTER, "pxe.register", {}, 5))
    requests.fail_all("the XMPP session was lost")
    assert first[0].check(LinkDown) and second[0].check(LinkDown)
    clock.advance(10)  # the timeouts were cancelled: nothing fires twice
    assert len(first) == len(second) == 1


def test_cancelling_a_request_forgets_it(setup):
    clock, channel, requests = setup
    d = requests.request(MASTER, "pxe.menu", {}, 5)
    d.addErrback(lambda f: None)
    d.cancel()
    assert requests.pending == {}
    assert clock.getDelayedCalls() == []


def test_master_trust_names_the_key_only_for_the_master_account():
    trust = master_trust("master@medulla.example/master", "KEY")
    assert trust(JID("master@medulla.example/other"), None) == "KEY"
    assert trust(JID("MASTER@medulla.example/x"), None) == "KEY"
    assert trust(JID("relay-lyon@medulla.example/master"), None) is None
    assert master_trust(MASTER, None)(MASTER, None) is None
