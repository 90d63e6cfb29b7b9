"""package.synced to the master over an in-memory XMPP stream: signed with the relay's key,
batched, a snapshot at every session, nothing sent while the link is down."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel.subprotocols import StreamManager

from medulla_appliance.core import envelope as env
from medulla_appliance.core.xmpp.channel import EnvelopeChannel
from medulla_appliance.core.xmpp.link import SessionWatcher, master_trust
from medulla_appliance.syncthing.notify import ACTION, MasterNotifier

NOW = 1_763_820_000.0
RELAY = JID("relay-lyon@medulla.example/syncthing")
MASTER = JID("master@medulla.example/master")
RELAY_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(3, 35)))
MASTER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream="
          b"'http://etherx.jabber.org/streams' from='medulla.example' id='s1' version='1.0'>")
SHA1, SHA2 = "1" * 64, "2" * 64


class Link:
    """The relay's XMPP link in memory: a StreamManager over a StringTransport."""

    def __init__(self):
        self.clock = Clock()
        self.clock.advance(NOW)
        factory = xmlstream.XmlStreamFactory(xmlstream.Authenticator())
        self.manager = StreamManager(factory, reactor=self.clock)
        self.factory = factory
        self.channel = EnvelopeChannel(RELAY, RELAY_KEY, self.clock,
                                       master_trust(MASTER.full(), MASTER_KEY.public_key()))
        self.notifier = MasterNotifier(self.channel, MASTER.full(), self.clock,
                                       relays=["lyon"], max_items=3)
        for handler in (self.channel.messages,
                        SessionWatcher(self.notifier.session_up, self.notifier.session_down)):
            handler.setHandlerParent(self.manager)
        self.xs = None

    def connect(self):
        self.xs = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.xs.makeConnection(self.transport)
        self.xs.dataReceived(HEADER)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)

    def disconnect(self):
        self.xs.connectionLost(None)

    def receive(self, data):
        self.xs.dataReceived(data.encode())

    def envelopes(self):
        """The envelopes sent since last time, verified with the relay's public key."""
        data = self.transport.value()
        self.transport.clear()
        stanzas = []
        parser = domish.elementStream()
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = stanzas.append
        parser.DocumentEndEvent = lambda: None
        parser.parse(HEADER + data)
        out = []
        for stanza in stanzas:
            assert stanza["to"] == MASTER.full()
            out.append(env.open_envelope(str(stanza.body), RELAY_KEY.public_key(),
                                         RELAY.full(), MASTER.full(), env.ReplayGuard(self.clock)))
        return out


@pytest.fixture
def link():
    return Link()


def datas(envelopes):
    assert all(e.action == ACTION for e in envelopes)
    return [e.data for e in envelopes]


def test_a_session_starts_with_a_snapshot_even_when_nothing_is_complete(link):
    link.connect()
    assert datas(link.envelopes()) == [
        {"relay": "lyon", "snapshot": True, "complete": [], "gone": []}]


def test_changes_are_batched_signed_and_the_last_word_wins(link):
    link.connect()
    link.envelopes()
    link.notifier.on_package_complete("lyon", "firefox", SHA1)
    link.notifier.on_package_gone("lyon", "firefox", SHA1)
    link.notifier.on_package_complete("lyon", "firefox", SHA2)
    link.notifier.on_package_gone("lyon", "7zip", SHA1)
    assert link.envelopes() == []  # gathered for a second
    link.clock.advance(1)
    assert datas(link.envelopes()) == [{
        "relay": "lyon", "snapshot": False,
        "complete": [{"package_id": "firefox", "descriptor_sha256": SHA2}],
        "gone": [{"package_id": "7zip", "descriptor_sha256": SHA1}]}]


def test_nothing_is_sent_while_offline_and_the_next_snapshot_says_it_all(link):
    link.notifier.on_package_complete("lyon", "firefox", SHA1)
    link.clock.advance(1)
    link.connect()
    first = datas(link.envelopes())
    assert first[0]["complete"] == [{"package_id": "firefox", "descriptor_sha256": SHA1}]
    link.disconnect()
    link.notifier.on_package_complete("lyon", "7zip", SHA2)
    link.notifier.on_package_gone("lyon", "firefox", SHA1)
    link.clock.advance(1)
    link.connect()
    assert datas(link.envelopes()) == [{
        "relay": "lyon", "snapshot": True,
        "complete": [{"package_id": "7zip", "descriptor_sha256": SHA2}], "gone": []}]


def test_a_big_snapshot_is_split_and_only_the_first_part_resets(link):
    for number in range(7):
        link.notifier.on_package_complete("lyon", "pkg%d" % number, SHA1)
    link.connect()
    parts = datas(link.envelopes())
    assert [p["snapshot"] for p in parts] == [True, False, False]
    assert [len(p["complete"]) for p in parts] == [3, 3, 1]


def test_the_master_view_of_several_relays(link):
    link.notifier.on_package_complete("paris", "firefox", SHA1)
    link.connect()
    assert [(d["relay"], d["snapshot"]) for d in datas(link.envelopes())] == [
        ("lyon", True), ("paris", True)]


def test_replies_verify_with_the_master_key_and_others_are_dropped(link):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        link.connect()
        (sent,) = link.envelopes()
        refusal = sent.reply({"error": "unknown-relay", "message": "who is lyon?"}, ret=403,
                             now=NOW)
        stanza = domish.Element(("jabber:client", "message"))
        stanza["from"], stanza["to"], stanza["type"] = MASTER.full(), RELAY.full(), "chat"
        stanza.addElement("body", content=env.encode(refusal, MASTER_KEY, MASTER.full(),
                                                     RELAY.full()))
        link.receive(stanza.toXml())
        forged = sent.reply({}, ret=0, now=NOW)
        stanza.body.children = [env.encode(forged, RELAY_KEY, MASTER.full(), RELAY.full())]
        link.receive(stanza.toXml())
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert link.envelopes() == []  # results are never answered
    lines = [formatEvent(e) for e in logged
             if e.get("log_namespace", "").startswith("medulla_appliance")]
    assert "the master refused package.synced: 403 who is lyon?" in lines
    assert any("refused result.package.synced" in line and "bad-signature" in line
               for line in lines)
