"""One outbound XMPP client link, kept up for as long as the daemon runs.

A wokkel `StreamManager` carries the handlers (one XEP or feature each); a Twisted
`ClientService` keeps the TCP connection, with a backoff that is jittered so that a
fleet coming back after an outage spreads its reconnections instead of stampeding.
"""

import random

from twisted.application import internet, service
from twisted.logger import Logger
from twisted.words.protocols.jabber import xmlstream
from wokkel.subprotocols import StreamManager

from .auth import make_client_factory
from .handlers import KeepAlive

DEFAULT_MIN_DELAY = 1.0
DEFAULT_MAX_DELAY = 30.0
DEFAULT_FACTOR = 1.6
DEFAULT_IQ_TIMEOUT = 30.0


def jittered_backoff(attempt, *, minimum=DEFAULT_MIN_DELAY, maximum=DEFAULT_MAX_DELAY,
                     factor=DEFAULT_FACTOR, rand=random.random):
    """Seconds to wait before reconnection number `attempt` (1, 2, ...).

    "Equal jitter": half the exponential delay is fixed, half is random, so nobody
    retries at once and everybody retries within the cap.
    """
    try:
        ceiling = min(maximum, minimum * factor ** max(0, attempt - 1))
    except OverflowError:  # after ~1,500 attempts (hours of outage): stay at the cap
        ceiling = maximum
    return ceiling / 2 + rand() * ceiling / 2


class XMPPClientService(service.MultiService):
    """Keeps one authenticated XMPP session as `jid`; handlers attach to `manager`.

    `endpoint` is a Twisted client endpoint (TCP to the XMPP server); `tls` the client
    TLS options from `auth.tls_options`; `keepalive` (interval, timeout) pings the server
    to notice a network that vanished without closing the connection.
    `register_wanted()` says whether to try in-band registration before authenticating
    (agents creating their own account).
    """

    log = Logger()

    def __init__(self, jid, password, endpoint, tls, *, clock, rand=random.random,
                 register_wanted=lambda: False, min_delay=DEFAULT_MIN_DELAY,
                 max_delay=DEFAULT_MAX_DELAY, iq_timeout=DEFAULT_IQ_TIMEOUT, keepalive=None):
        super().__init__()
        self.jid = jid
        self.factory = make_client_factory(jid, password, tls, register_wanted)
        self.factory.noisy = False
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self._authenticated)
        self.factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, self._init_failed)
        self.manager = StreamManager(self.factory, reactor=clock)
        self.manager.timeout = iq_timeout
        self._failures = 0  # sessions in a row that never authenticated

        def retry_policy(attempt):
            return jittered_backoff(max(attempt, self._failures), minimum=min_delay,
                                    maximum=max_delay, rand=rand)

        self.connector = internet.ClientService(
            endpoint, self.factory, retryPolicy=retry_policy, clock=clock)
        self.connector.setServiceParent(self)
        if keepalive is not None:  # (interval, timeout) in seconds
            self.addHandler(KeepAlive(clock, *keepalive))

    @property
    def connected(self):
        """True while an authenticated session is up."""
        return bool(self.manager._initialized)

    def addHandler(self, handler):
        """Attach an XMPPHandler (one feature) to this link."""
        handler.setHandlerParent(self.manager)

    def _authenticated(self, xs):
        self._failures = 0
        self.log.info("XMPP session up as {jid}", jid=xs.authenticator.jid.full())

    def _init_failed(self, failure):
        # The stream stays open after a failed initialisation; close it so that the
        # ClientService reconnects, with a delay that grows with each failure.
        self._failures += 1
        self.log.error("XMPP session as {jid} failed: {reason}",
                       jid=self.jid.full(),
                       reason=failure.getErrorMessage() or failure.type.__name__)
        xs = self.manager.xmlstream
        if xs is not None and xs.transport is not None:
            xs.transport.loseConnection()
