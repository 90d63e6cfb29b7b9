"""The XMPP keepalive: quiet links are probed, busy ones are left alone, and only a link
that stays silent through a whole ping timeout is dropped."""

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core.xmpp.handlers import KeepAlive


class FakeStream:
    def __init__(self):
        self.observers = []
        self.authenticator = SimpleNamespace(jid=JID("agent@medulla.test/res"))
        self.transport = SimpleNamespace(aborted=False)
        self.transport.abortConnection = lambda: setattr(self.transport, "aborted", True)

    def addObserver(self, path, fn, priority=0):
        self.observers.append(fn)

    def stanza(self):
        for fn in self.observers:
            fn(object())


class FakePinger:
    def __init__(self):
        self.pings = []

    def ping(self, entity, timeout):
        d = defer.Deferred()
        self.pings.append((entity.full(), timeout, d))
        return d


def started(interval=60, timeout=20):
    clock, xs = task.Clock(), FakeStream()
    keepalive = KeepAlive(clock, interval, timeout)
    keepalive.xmlstream = xs
    keepalive.connectionInitialized()
    keepalive._pinger = FakePinger()  # in place of real IQs
    return clock, xs, keepalive, keepalive._pinger


def test_a_busy_link_is_never_pinged():
    clock, xs, _, pinger = started()
    for _ in range(10):
        clock.advance(30)
        xs.stanza()
    assert pinger.pings == []


def test_a_quiet_link_is_pinged_and_an_answer_keeps_it():
    clock, xs, _, pinger = started()
    clock.advance(60)
    assert [(p[0], p[1]) for p in pinger.pings] == [("medulla.test", 20)]
    pinger.pings[0][2].callback(True)
    assert not xs.transport.aborted
    clock.advance(60)
    assert len(pinger.pings) == 2


def test_a_link_silent_through_the_timeout_is_dropped():
    clock, xs, _, pinger = started()
    clock.advance(60)
    clock.advance(20)
    pinger.pings[0][2].callback(False)
    assert xs.transport.aborted


def test_a_late_answer_under_load_is_not_a_dead_link():
    clock, xs, _, pinger = started()
    clock.advance(60)
    clock.advance(10)
    xs.stanza()  # the server is slow, not gone
    clock.advance(10)
    pinger.pings[0][2].callback(False)
    assert not xs.transport.aborted


def test_timers_stop_with_the_connection():
    clock, xs, keepalive, _ = started()
    keepalive.connectionLost(None)
    assert clock.getDelayedCalls() == []
