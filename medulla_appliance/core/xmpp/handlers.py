"""Small XMPP features, one handler each: XEP-0199 ping, XEP-0030 disco#info, and the
chat-message channel that carries our JSON envelopes.

wokkel's own `ping` and `disco` modules import names modern Twisted removed, so these are
written on `wokkel.subprotocols`, which works.
"""

from twisted.logger import Logger
from twisted.words.protocols.jabber import error
from twisted.words.protocols.jabber.jid import JID
from twisted.words.protocols.jabber.xmlstream import toResponse
from wokkel import generic
from wokkel.subprotocols import XMPPHandler

NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
PING_REQUEST = "/iq[@type='get']/ping[@xmlns='%s']" % NS_PING
DISCO_INFO_REQUEST = "/iq[@type='get']/query[@xmlns='%s']" % NS_DISCO_INFO
CHAT_MESSAGE = "/message"


class PingRequest(generic.Request):
    """An XEP-0199 ping IQ."""

    stanzaKind = "iq"

    def __init__(self, recipient, timeout):
        super().__init__(recipient=recipient, stanzaType="get")
        self.timeout = timeout

    def toElement(self):
        element = super().toElement()
        element.addElement((NS_PING, "ping"))
        return element


class PingHandler(XMPPHandler):
    """Answers pings, and pings others (`ping(jid, timeout)` fires True or False)."""

    def connectionInitialized(self):
        self.xmlstream.addObserver(PING_REQUEST, self._on_ping)

    def _on_ping(self, iq):
        iq.handled = True
        self.send(toResponse(iq, "result"))

    def ping(self, entity, timeout):
        """Fires True if `entity` answered in time, False otherwise (never errbacks)."""
        d = self.request(PingRequest(entity, timeout))
        d.addCallbacks(lambda _: True, lambda _: False)
        return d


class KeepAlive(XMPPHandler):
    """Pings our own server after `interval` seconds without any incoming stanza; no
    answer within `timeout`, and nothing else heard meanwhile, means the network went
    away silently (no RST, no FIN): the link is dropped and the client's backoff
    reconnects. Traffic counts as life, so a busy but slow server is never cut off."""

    log = Logger()

    def __init__(self, clock, interval, timeout):
        super().__init__()
        self.clock, self.interval, self.timeout = clock, interval, timeout
        self._call = None
        self._heard = 0.0
        self._pinger = PingHandler()

    def connectionInitialized(self):
        self._pinger.xmlstream = self.xmlstream
        self._pinger.parent = self.parent
        self._heard = self.clock.seconds()
        self.xmlstream.addObserver("/*", self._stanza, priority=100)
        self._schedule(self.interval)

    def connectionLost(self, reason):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _stanza(self, _element):
        self._heard = self.clock.seconds()

    def _schedule(self, delay):
        self._call = self.clock.callLater(max(delay, 0.001), self._tick)

    def _tick(self):
        quiet = self.clock.seconds() - self._heard
        if quiet < self.interval:
            self._schedule(self.interval - quiet)
            return
        xs, sent_at = self.xmlstream, self.clock.seconds()
        server = JID(xs.authenticator.jid.host)
        self._pinger.ping(server, self.timeout).addCallback(self._answered, xs, sent_at)

    def _answered(self, alive, xs, sent_at):
        if xs is not self.xmlstream:
            return  # that stream is gone already
        if alive or self._heard > sent_at:
            self._schedule(self.interval)
            return
        self.log.warn("nothing from the XMPP server in {timeout}s: reconnecting",
                      timeout=self.timeout)
        if xs.transport is not None:
            xs.transport.abortConnection()


class DiscoInfoHandler(XMPPHandler):
    """Answers disco#info with who we are and which features we speak."""

    def __init__(self, category="client", kind="bot", name="medulla",
                 features=(NS_DISCO_INFO, NS_PING)):
        super().__init__()
        self.category, self.kind, self.name = category, kind, name
        self.features = features

    def connectionInitialized(self):
        self.xmlstream.addObserver(DISCO_INFO_REQUEST, self._on_disco_info)

    def _on_disco_info(self, iq):
        iq.handled = True
        response = toResponse(iq, "result")
        query = response.addElement((NS_DISCO_INFO, "query"))
        identity = query.addElement("identity")
        identity["category"], identity["type"], identity["name"] = (
            self.category, self.kind, self.name)
        for feature in self.features:
            query.addElement("feature")["var"] = feature
        self.send(response)


class MessageChannel(XMPPHandler):
    """Delivers the body of each chat message to `receive(sender_jid, body)`.

    Messages without a body or a sender, and error bounces, are dropped here: the
    envelope layer above only ever sees text that claims to come from someone.
    """

    log = Logger()

    def __init__(self, receive):
        super().__init__()
        self.receive = receive

    def connectionInitialized(self):
        self.xmlstream.addObserver(CHAT_MESSAGE, self._on_message)

    def _on_message(self, message):
        kind = message.getAttribute("type", "normal")
        if kind == "error":
            condition = _error_condition(message)
            self.log.debug("message to {to} bounced: {condition}",
                           to=message.getAttribute("from"), condition=condition)
            return
        if kind not in ("chat", "normal") or message.body is None:
            return
        sender = message.getAttribute("from")
        if not sender:
            return
        try:
            sender_jid = JID(sender)
        except Exception:
            self.log.warn("dropped a message with an invalid sender JID {sender!r}",
                          sender=sender[:200])
            return
        message.handled = True
        self.receive(sender_jid, str(message.body))

    def send_body(self, recipient, body):
        """Send `body` as a chat message to `recipient` (a JID)."""
        msg = generic.Stanza(recipient=recipient)
        msg.stanzaKind, msg.stanzaType = "message", "chat"
        element = msg.toElement()
        element.addElement("body", content=body)
        self.send(element)


def _error_condition(stanza):
    try:
        return error.exceptionFromStanza(stanza).condition
    except Exception:
        return "unknown"
