"""The outbound XMPP link: jittered backoff, and reconnection delays that grow with failed
sessions even when each TCP connection itself succeeds. Driven by a task.Clock and a fake
endpoint over StringTransport."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from wokkel.subprotocols import XMPPHandler

from medulla_appliance.core.xmpp.client import (
    DEFAULT_FACTOR,
    DEFAULT_MAX_DELAY,
    DEFAULT_MIN_DELAY,
    XMPPClientService,
    jittered_backoff,
)

SERVER_HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream="
                 b"'http://etherx.jabber.org/streams' from='medulla.example' id='s1' "
                 b"version='1.0'>")
NO_STARTTLS = b"<stream:features/>"


# -- jittered_backoff --------------------------------------------------------------------

def ceiling(attempt):
    return min(DEFAULT_MAX_DELAY, DEFAULT_MIN_DELAY * DEFAULT_FACTOR ** (attempt - 1))


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 10, 50])
def test_backoff_lies_between_half_the_ceiling_and_the_ceiling(attempt):
    assert jittered_backoff(attempt, rand=lambda: 0.0) == pytest.approx(ceiling(attempt) / 2)
    assert jittered_backoff(attempt, rand=lambda: 0.999999) == pytest.approx(
        ceiling(attempt), rel=1e-5)


def test_backoff_grows_with_each_attempt_until_the_cap():
    lows = [jittered_backoff(a, rand=lambda: 0.0) for a in range(1, 15)]
    assert lows[:4] == pytest.approx([0.5, 0.8, 1.28, 2.048])
    assert lows == sorted(lows)
    assert lows[-1] == DEFAULT_MAX_DELAY / 2


def test_backoff_never_exceeds_the_maximum():
    assert jittered_backoff(100, maximum=10, rand=lambda: 0.999999) <= 10
    assert jittered_backoff(100, maximum=10, rand=lambda: 0.0) == 5


@pytest.mark.parametrize("attempt", [1_600, 10_000, 10**9])
def test_backoff_after_a_very_long_outage_stays_at_the_cap(attempt):
    # 1.6 ** 1,600 overflows a float: hours of outage must not break reconnection.
    assert jittered_backoff(attempt, rand=lambda: 0.0) == DEFAULT_MAX_DELAY / 2


@pytest.mark.parametrize("attempt", [0, -3])
def test_backoff_before_the_first_attempt_uses_the_minimum(attempt):
    assert jittered_backoff(attempt, rand=lambda: 0.0) == DEFAULT_MIN_DELAY / 2


@given(attempt=st.integers(min_value=1, max_value=100_000),
       r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
       minimum=st.floats(min_value=0.01, max_value=10),
       maximum=st.floats(min_value=10, max_value=3600))
def test_backoff_bounds_hold_for_any_attempt(attempt, r, minimum, maximum):
    delay = jittered_backoff(attempt, minimum=minimum, maximum=maximum, rand=lambda: r)
    low = jittered_backoff(attempt, minimum=minimum, maximum=maximum, rand=lambda: 0.0)
    assert low <= delay <= 2 * low <= maximum
    assert delay >= minimum / 2


# -- the service's retry policy ----------------------------------------------------------

class Endpoint:
    """Connects at once over a StringTransport, or refuses when `refuse` is set."""

    def __init__(self):
        self.refuse = False
        self.connections = []

    def connect(self, factory):
        if self.refuse:
            return defer.fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return defer.succeed(protocol)


class Link:
    def __init__(self, **kwargs):
        self.clock = Clock()
        self.endpoint = Endpoint()
        self.service = XMPPClientService(JID("pc01.ab1@medulla.example/0a1b2c3d4e5f"), "pw",
                                         self.endpoint, None, clock=self.clock,
                                         rand=lambda: 0.0, **kwargs)

    def pending_delay(self):
        (call,) = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def retry(self):
        self.clock.advance(self.pending_delay())

    def current(self):
        return self.endpoint.connections[-1]

    def fail_session(self):
        """The server offers no STARTTLS: the session fails, we hang up, TCP closes."""
        protocol, transport = self.current()
        protocol.dataReceived(SERVER_HEADER + NO_STARTTLS)
        assert transport.disconnecting               # we hung up ourselves
        protocol.connectionLost(Failure(ConnectionDone()))

    def authenticate(self):
        protocol, _ = self.current()
        protocol.dataReceived(SERVER_HEADER)
        protocol.dispatch(protocol, xmlstream.STREAM_AUTHD_EVENT)

    def drop(self):
        protocol, _ = self.current()
        protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def link():
    link = Link()
    link.service.startService()
    yield link
    link.service.stopService()


def test_refused_connections_are_retried_with_growing_delays(link):
    link.endpoint.refuse = True
    link.drop()
    delays = []
    for _ in range(6):
        delays.append(link.pending_delay())
        link.retry()
    assert delays == pytest.approx([0.5, 0.8, 1.28, 2.048, 3.2768, 5.24288])


def test_failed_sessions_make_the_delay_grow_although_tcp_connects(link):
    delays = []
    for _ in range(5):
        link.fail_session()
        delays.append(link.pending_delay())
        link.retry()
    # Each TCP connection succeeded (ClientService's own count starts again at 1 each
    # time), yet the delay grows with the failed sessions in a row.
    assert delays == pytest.approx([0.5, 0.8, 1.28, 2.048, 3.2768])
    assert len(link.endpoint.connections) == 6


def test_an_authenticated_session_resets_the_delay(link):
    for _ in range(4):
        link.fail_session()
        link.retry()
    link.authenticate()
    assert link.service.connected
    link.drop()
    assert not link.service.connected
    assert link.pending_delay() == pytest.approx(0.5)


def test_after_a_day_of_outage_the_link_still_retries_within_the_cap(link):
    link.endpoint.refuse = True
    link.drop()
    for _ in range(4_000):
        assert link.pending_delay() <= DEFAULT_MAX_DELAY
        link.retry()
    link.endpoint.refuse = False
    link.retry()
    assert len(link.endpoint.connections) == 2     # and it connects once the server is back


def test_max_delay_is_configurable():
    link = Link(max_delay=4.0, min_delay=2.0)
    link.service.startService()
    link.endpoint.refuse = True
    link.drop()
    delays = []
    for _ in range(5):
        delays.append(link.pending_delay())
        link.retry()
    assert delays == pytest.approx([1.0, 1.6, 2.0, 2.0, 2.0])  # half of min(4, 2*1.6**n)
    link.service.stopService()


def test_stopping_the_service_leaves_no_timer(link):
    link.fail_session()
    assert link.clock.getDelayedCalls()
    link.service.stopService()
    assert link.clock.getDelayedCalls() == []


def test_handlers_start_when_the_session_is_authenticated(link):
    class Recorder(XMPPHandler):
        initialized = 0

        def connectionInitialized(self):
            self.initialized += 1

    handler = Recorder()
    link.service.addHandler(handler)
    assert handler.initialized == 0
    link.authenticate()
    assert handler.initialized == 1


def test_iq_timeout_is_given_to_the_stream_manager():
    assert Link(iq_timeout=7.0).service.manager.timeout == 7.0
