"""XMPP handlers and the signed-envelope channel, over a wokkel StreamManager and an
XmlStream on a StringTransport: bytes in, stanzas out, a task.Clock for time."""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel.subprotocols import StreamManager

from medulla_appliance.core import envelope as env
from medulla_appliance.core.xmpp.channel import EnvelopeChannel, Refusal, RefusalLog
from medulla_appliance.core.xmpp.handlers import (
    NS_DISCO_INFO,
    NS_PING,
    DiscoInfoHandler,
    MessageChannel,
    PingHandler,
)

NOW = 1_763_820_000.0
MASTER = JID("master@medulla.example/master")
AGENT = JID("pc01.ab1@medulla.example/0a1b2c3d4e5f")
MASTER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
AGENT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream="
          b"'http://etherx.jabber.org/streams' from='medulla.example' id='s1' version='1.0'>")


class Wire:
    """An authenticated stream: `receive` feeds stanzas, `sent()` parses what went out."""

    def __init__(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        factory = xmlstream.XmlStreamFactory(xmlstream.Authenticator())
        self.manager = StreamManager(factory, reactor=self.clock)
        self.xs = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.xs.makeConnection(self.transport)
        self.xs.dataReceived(HEADER)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        self.transport.clear()

    def receive(self, data):
        self.xs.dataReceived(data if isinstance(data, bytes) else data.encode("utf-8"))

    def sent(self):
        data, out = self.transport.value(), []
        self.transport.clear()
        parser = domish.elementStream()
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = out.append
        parser.DocumentEndEvent = lambda: None
        parser.parse(HEADER + data)
        return out


AGENT_FULL, MASTER_FULL = AGENT.full(), MASTER.full()


def message(body=None, sender=AGENT_FULL, kind="chat", to=MASTER_FULL):
    element = domish.Element(("jabber:client", "message"))
    for name, value in (("from", sender), ("to", to), ("type", kind)):
        if value is not None:
            element[name] = value
    if body is not None:
        element.addElement("body", content=body)
    return element.toXml()


@pytest.fixture
def wire():
    return Wire()


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events, prefix="refused"):
    return [formatEvent(e) for e in events
            if e.get("log_namespace", "").startswith("medulla_appliance")
            and e.get("log_format", "").startswith(prefix)]


# -- MessageChannel ----------------------------------------------------------------------

@pytest.fixture
def inbox(wire):
    received = []
    MessageChannel(lambda sender, body: received.append((sender, body))) \
        .setHandlerParent(wire.manager)
    return received


@pytest.mark.parametrize("kind", ["chat", "normal", None])
def test_chat_messages_deliver_body_and_sender(wire, inbox, kind):
    wire.receive(message('{"a": "<b>&"}', kind=kind))
    assert inbox == [(AGENT, '{"a": "<b>&"}')]


@pytest.mark.parametrize("stanza", [
    message("x", kind="error"), message("x", kind="headline"), message("x", kind="groupchat"),
    message(None), message("x", sender=None), message("x", sender="a@b@c/d"),
])
def test_other_messages_are_dropped(wire, inbox, stanza):
    wire.receive(stanza)
    assert inbox == []


def test_send_body_sends_a_chat_message(wire):
    channel = MessageChannel(lambda *a: None)
    channel.setHandlerParent(wire.manager)
    channel.send_body(AGENT, "hello")
    (sent,) = wire.sent()
    assert (sent.name, sent["to"], sent["type"], str(sent.body)) == (
        "message", AGENT.full(), "chat", "hello")


# -- PingHandler, DiscoInfoHandler -------------------------------------------------------

@pytest.fixture
def pinger(wire):
    handler = PingHandler()
    handler.setHandlerParent(wire.manager)
    return handler


def test_a_ping_is_answered_with_a_result(wire, pinger):
    wire.receive("<iq type='get' id='p1' from='%s'><ping xmlns='%s'/></iq>"
                 % (MASTER.full(), NS_PING))
    (reply,) = wire.sent()
    assert (reply.name, reply["type"], reply["id"], reply["to"]) == (
        "iq", "result", "p1", MASTER.full())


def outcome(d):
    out = []
    d.addBoth(out.append)
    return out


def test_ping_fires_true_when_answered(wire, pinger):
    result = outcome(pinger.ping(AGENT, 5))
    (request,) = wire.sent()
    assert (request["type"], request["to"], request.ping.uri) == ("get", AGENT.full(), NS_PING)
    wire.receive("<iq type='result' id='%s' from='%s'/>" % (request["id"], AGENT.full()))
    assert result == [True]
    assert wire.clock.getDelayedCalls() == []


def test_ping_fires_false_on_an_error(wire, pinger):
    result = outcome(pinger.ping(AGENT, 5))
    (request,) = wire.sent()
    wire.receive("<iq type='error' id='%s' from='%s'><error type='cancel'><service-unavailable"
                 " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                 % (request["id"], AGENT.full()))
    assert result == [False]


def test_ping_fires_false_after_the_timeout(wire, pinger):
    result = outcome(pinger.ping(AGENT, 5))
    wire.clock.advance(4.9)
    assert result == []
    wire.clock.advance(0.1)
    assert result == [False]
    assert wire.clock.getDelayedCalls() == []


def test_disco_info_lists_identity_and_features(wire):
    DiscoInfoHandler(kind="pc", name="medulla-agent").setHandlerParent(wire.manager)
    wire.receive("<iq type='get' id='d1' from='%s'><query xmlns='%s'/></iq>"
                 % (MASTER.full(), NS_DISCO_INFO))
    (reply,) = wire.sent()
    query = reply.query
    assert (reply["type"], reply["id"], query.uri) == ("result", "d1", NS_DISCO_INFO)
    identity = query.identity
    assert (identity["category"], identity["type"], identity["name"]) == (
        "client", "pc", "medulla-agent")
    assert [f["var"] for f in query.elements(NS_DISCO_INFO, "feature")] == [
        NS_DISCO_INFO, NS_PING]


# -- EnvelopeChannel ---------------------------------------------------------------------

class Master:
    """A master-side EnvelopeChannel that trusts AGENT with AGENT_KEY."""

    def __init__(self, wire):
        self.wire = wire
        self.keys = {AGENT.userhost(): AGENT_KEY.public_key()}
        self.channel = EnvelopeChannel(MASTER, MASTER_KEY, wire.clock,
                                       lambda sender, signed: self.keys.get(sender.userhost()))
        self.channel.messages.setHandlerParent(wire.manager)
        self.calls, self.heard = [], []
        self.channel.on_heard = self.heard.append

    def handle(self, action, fn):
        def recording(sender, envelope):
            self.calls.append((sender, envelope))
            return fn(sender, envelope)
        self.channel.handle(action, recording)

    def replies(self):
        """(to, envelope) of each reply, verified as signed by the master for AGENT."""
        out = []
        for stanza in self.wire.sent():
            body = str(stanza.body)
            envelope = env.open_envelope(body, MASTER_KEY.public_key(), MASTER.full(),
                                         stanza["to"], env.ReplayGuard(self.wire.clock))
            out.append((stanza["to"], envelope))
        return out


@pytest.fixture
def master(wire):
    return Master(wire)


def signed_body(action="agent.register", data=None, key=AGENT_KEY, sender=AGENT,
                recipient=MASTER, now=NOW, **kwargs):
    envelope = env.Envelope.new(action, {"hostname": "pc01"} if data is None else data,
                                now=now, **kwargs)
    return envelope, env.encode(envelope, key, sender.full(), recipient.full())


def test_a_verified_envelope_reaches_its_handler_and_is_answered(wire, master):
    master.handle("agent.register", lambda sender, e: {"uuid": "m-1"})
    envelope, body = signed_body(sessionid="reg-42")
    wire.receive(message(body))
    ((sender, seen),) = master.calls
    assert sender == AGENT and seen == envelope
    ((to, reply),) = master.replies()
    assert to == AGENT.full()
    assert (reply.action, reply.sessionid, reply.ret, reply.data) == (
        "result.agent.register", "reg-42", 0, {"uuid": "m-1"})
    assert master.heard == [AGENT]


def test_a_deferred_answer_is_sent_when_it_fires(wire, master):
    later = defer.Deferred()
    master.handle("agent.register", lambda sender, e: later)
    wire.receive(message(signed_body()[1]))
    assert master.replies() == []
    later.callback({"uuid": "m-1"})
    assert [r.data for _, r in master.replies()] == [{"uuid": "m-1"}]


def test_a_handler_returning_none_sends_nothing(wire, master):
    master.handle("agent.register", lambda sender, e: None)
    wire.receive(message(signed_body()[1]))
    assert len(master.calls) == 1 and master.replies() == []


def test_an_untrusted_sender_is_dropped_with_one_log_line(wire, master, logged):
    master.handle("agent.register", lambda sender, e: {"uuid": "m-1"})
    stranger = JID("evil.xyz@medulla.example/aabbccddeeff")
    wire.receive(message(signed_body(sender=stranger)[1], sender=stranger.full()))
    assert master.calls == [] and master.replies() == [] and master.heard == []
    (line,) = lines(logged)
    assert "untrusted-sender" in line and stranger.full() in line


@pytest.mark.parametrize("how", ["other key", "other recipient", "other sender"])
def test_a_bad_signature_is_dropped(wire, master, logged, how):
    master.handle("agent.register", lambda sender, e: {"uuid": "m-1"})
    kwargs = {"other key": {"key": OTHER_KEY},
              "other recipient": {"recipient": JID("relay-lyon@medulla.example/relay")},
              "other sender": {"sender": JID("pc02.ab1@medulla.example/x")}}[how]
    wire.receive(message(signed_body(**kwargs)[1]))
    assert master.calls == [] and master.replies() == []
    (line,) = lines(logged)
    assert "bad-signature" in line


def test_a_replayed_envelope_is_dropped(wire, master, logged):
    master.handle("agent.register", lambda sender, e: {"uuid": "m-1"})
    body = signed_body()[1]
    wire.receive(message(body))
    wire.receive(message(body))
    assert len(master.calls) == 1 and len(master.replies()) == 1
    (line,) = lines(logged)
    assert "replay" in line


def test_a_stale_envelope_is_dropped(wire, master, logged):
    master.handle("agent.register", lambda sender, e: {"uuid": "m-1"})
    wire.receive(message(signed_body(now=NOW - 600)[1]))
    assert master.calls == [] and master.replies() == []
    assert "stale" in lines(logged)[0]


def test_an_unknown_action_from_a_trusted_sender_gets_404(wire, master, logged):
    wire.receive(message(signed_body(action="tunnel.open", sessionid="t-1")[1]))
    ((_, reply),) = master.replies()
    assert (reply.action, reply.sessionid, reply.ret, reply.data["error"]) == (
        "result.tunnel.open", "t-1", 404, "unknown-action")
    assert len(lines(logged)) == 1


def test_an_unknown_result_is_not_answered(wire, master):
    wire.receive(message(signed_body(action="result.tunnel.open")[1]))
    assert master.replies() == []


def test_a_refusal_is_answered_with_its_code_and_data(wire, master):
    def busy(sender, envelope):
        raise Refusal(429, "busy", "too many registrations", retry_after=3)
    master.handle("agent.register", busy)
    wire.receive(message(signed_body(sessionid="reg-1")[1]))
    ((_, reply),) = master.replies()
    assert (reply.sessionid, reply.ret) == ("reg-1", 429)
    assert reply.data == {"retry_after": 3, "error": "busy",
                          "message": "too many registrations"}


def test_a_refused_result_is_logged_but_never_answered(wire, master, logged):
    def refuse(sender, envelope):
        raise Refusal(409, "late", "session already closed")
    master.handle("result.deploy.start", refuse)
    wire.receive(message(signed_body(action="result.deploy.start")[1]))
    assert len(master.calls) == 1 and master.replies() == []
    (line,) = lines(logged)
    assert "late" in line
    assert not [e for e in logged if "log_failure" in e]


def test_a_crashing_handler_gives_500_and_a_logged_failure(wire, master, logged):
    def crash(sender, envelope):
        raise RuntimeError("boom")
    master.handle("agent.register", crash)
    wire.receive(message(signed_body()[1]))               # nothing raised out of here
    ((_, reply),) = master.replies()
    assert (reply.ret, reply.data) == (500, {"error": "internal", "message": "internal error"})
    failures = [e for e in logged if "log_failure" in e
                and e.get("log_namespace", "").startswith("medulla_appliance")]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["log_level"] == LogLevel.critical


def test_trust_refusing_the_sender_drops_the_envelope(wire, logged):
    def trust(sender, signed):
        raise Refusal(409, "key-mismatch", "enrolled with another key")
    channel = EnvelopeChannel(MASTER, MASTER_KEY, wire.clock, trust)
    channel.messages.setHandlerParent(wire.manager)
    channel.handle("agent.register", lambda s, e: {"uuid": "m-1"})
    wire.receive(message(signed_body()[1]))
    assert wire.sent() == []
    assert "key-mismatch" in lines(logged)[0]


@pytest.mark.parametrize("body", [
    "not json", "{", "[]", '"text"', "x" * (10 * 1024 * 1024),
    json.dumps({"v": "1", "action": "agent.register", "sessionid": "s", "ret": 0, "ts": 1,
                "nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "data": {}, "sig": "x"}),
    json.dumps({"v": 1, "action": "agent.register", "data": []}),
    "\nFailed password for root from 1.2.3.4",
])
def test_malformed_bodies_are_dropped_with_one_log_line(wire, master, logged, body):
    master.handle("agent.register", lambda sender, e: {"uuid": "m-1"})
    wire.receive(message(body))
    assert master.calls == [] and master.replies() == []
    (line,) = lines(logged)
    assert len(line) < 2000 and "\n" not in line


def test_send_new_is_signed_for_the_recipient(wire, master):
    sent = master.channel.send_new(AGENT, "machine.ping", {"n": 1})
    (stanza,) = wire.sent()
    opened = env.open_envelope(str(stanza.body), MASTER_KEY.public_key(), MASTER.full(),
                               AGENT.full(), env.ReplayGuard(wire.clock))
    assert opened == sent and opened.ts == int(NOW * 1000)


# -- RefusalLog --------------------------------------------------------------------------

class FakeLog:
    def __init__(self):
        self.lines = []

    def warn(self, fmt, **kwargs):
        self.lines.append(formatEvent({"log_format": fmt, **kwargs}))


def test_refusals_are_logged_once_per_sender_and_reason_per_minute():
    clock, log = Clock(), FakeLog()
    refusals = RefusalLog(log, clock)
    for _ in range(5):
        refusals.refused(AGENT, "agent.register", "replay", "nonce seen")
    refusals.refused(AGENT, "agent.register", "bad-signature", "not signed")
    refusals.refused(JID("pc01.ab1@medulla.example/otherres"), None, "replay", "x")  # same bare
    refusals.refused(JID("pc02.ab1@medulla.example/x"), None, "replay", "nonce seen")
    assert len(log.lines) == 3
    clock.advance(59.9)
    refusals.refused(AGENT, "agent.register", "replay", "nonce seen")
    assert len(log.lines) == 3
    clock.advance(0.1)
    refusals.refused(AGENT, "agent.register", "replay", "nonce seen")
    assert len(log.lines) == 4
    assert log.lines[-1].endswith("(+6 similar since)")
    assert log.lines[0] == ("refused agent.register from %s: replay: nonce seen" % AGENT.full())

