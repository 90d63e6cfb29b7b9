"""A relay host daemon's ApplianceLink enrolling with a real master side (EnvelopeChannel +
Relays over SQLite) through in-memory XMPP streams and a task.Clock: relay.register first,
the session callbacks only once accepted, refusals logged once and retried less and less
often, and medulla-relay's relay.status once enrolled."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from medulla_appliance.core import config as core_config
from medulla_appliance.core import envelope as env
from medulla_appliance.core import keys
from medulla_appliance.core.store import Store
from medulla_appliance.core.xmpp.channel import EnvelopeChannel
from medulla_appliance.core.xmpp.link import ApplianceLink, LinkDown
from medulla_appliance.core.xmpp.relay_enrolment import MAX_RETRY, registration
from medulla_appliance.master import storage
from medulla_appliance.master.relays import Relays
from medulla_appliance.relay.config import SCHEMA
from medulla_appliance.relay.service import RelayService
from medulla_appliance.testing.pki import CertificateAuthority

NOW = 1_763_820_000.0
DOMAIN = "medulla.test"
ENROLMENT_KEY = "E" * 32
MASTER = JID("master@%s/master" % DOMAIN)
RELAY = JID("relay-lyon@%s/relay" % DOMAIN)
MASTER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream="
          b"'http://etherx.jabber.org/streams' from='%s' id='s1' version='1.0'>"
          % DOMAIN.encode())


class Outbox:
    """Where the master's MessageChannel sends: its stanzas, for the wire to deliver."""

    def __init__(self):
        self.stanzas = []

    def send(self, element):
        self.stanzas.append(element)


class Wire:
    """medulla-relay (or its bare link) on relay-lyon, from a real relay.ini, and the
    master's envelope layer with the relays registry, joined by ``pump()``."""

    def __init__(self, tmp, *, jid=RELAY, enrolment_key=ENROLMENT_KEY, service=False):
        self.tmp = tmp
        password = tmp / "xmpp.password"
        password.write_text("secret\n")
        password.chmod(0o600)
        key_file = tmp / "enrolment.key"
        key_file.write_text((enrolment_key or "") + "\n")
        key_file.chmod(0o600)
        self.key_path = tmp / "relay.key"
        self.jid = jid
        ini = tmp / "relay.ini"
        ini.write_text(
            "[packages]\nroot = %s\n[status]\ninterval = 30s\n"
            "package_url = http://lyon.test:9990\n"
            "[xmpp]\njid = %s\npassword_file = %s\nmaster_jid = %s\nca_file = %s\n"
            "[keys]\nprivate_key = %s\nmaster_public_key = %s\n%s"
            % (tmp / "packages", jid.full(), password, MASTER.full(),
               CertificateAuthority.create(tmp / "ca").cert_path, self.key_path,
               keys.public_key_text(MASTER_KEY),
               "" if enrolment_key is None else "enrolment_key_file = %s\n" % key_file))
        self.cfg = core_config.load(str(ini), SCHEMA)
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        if service:
            self.service = RelayService(self.cfg, self.clock)
            self.link = self.service.link
        else:
            self.link = ApplianceLink(self.cfg, self.clock, name="medulla-relay")
        self.ups, self.downs = [], []
        self.link.on_session(lambda: self.ups.append(self.clock.seconds()),
                             lambda: self.downs.append(self.clock.seconds()))
        # The master side: the same trust rules as MasterService for relay actions.
        self.store = Store("sqlite:" + str(tmp / "master.sqlite"), storage.MIGRATIONS,
                           threaded=False)
        self.relays = Relays(self.store, self.clock, ENROLMENT_KEY, MASTER,
                             MASTER_KEY.public_key())
        self.master = EnvelopeChannel(MASTER, MASTER_KEY, self.clock, self._trust)
        self.master.handle("relay.register", self.relays.register)
        self.master.handle("relay.status", self.relays.status)
        self.master.messages.parent = self.outbox = Outbox()
        self.received = []  # (action, data) the master verified
        self.master.on_heard = lambda sender: None
        self.xs = self.transport = None

    def _trust(self, sender, signed):
        self.received.append(signed.envelope.action)
        if signed.envelope.action == "relay.register":
            return self.relays.register_key(sender, signed)
        return self.relays.appliance_key(sender)

    def connect(self):
        self.xs = self.link.xmpp.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.xs.makeConnection(self.transport)
        self.xs.dataReceived(HEADER)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)
        self.pump()

    def disconnect(self):
        self.xs.connectionLost(None)

    def pump(self):
        """Carry the relay's messages to the master and the answers back, till quiet."""
        while True:
            data = self.transport.value()
            self.transport.clear()
            stanzas = _messages(data)
            for stanza in stanzas:
                assert stanza["to"] == MASTER.full()
                self.master._receive(self.jid, str(stanza.body))  # the server stamps 'from'
            answers, self.outbox.stanzas = self.outbox.stanzas, []
            for element in answers:
                element["from"] = MASTER.full()
                self.xs.dataReceived(element.toXml().encode())
            if not stanzas and not answers:
                return

    def advance(self, seconds, step=1.0):
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.pump()


def _messages(data):
    start = data.find(b"<message")
    if start < 0:
        return []
    stanzas = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = stanzas.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(HEADER + data[start:])
    return [s for s in stanzas if s.name == "message"]


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [formatEvent(e) for e in events if e.get("log_namespace", "").endswith(
        "RelayEnrolment")]
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def wire(tmp_path):
    w = Wire(tmp_path)
    yield w
    w.store.close()


def test_the_link_enrols_before_it_says_anything_else(wire):
    assert wire.link.enrolment is not None
    wire.connect()
    assert wire.received == ["relay.register"]
    assert wire.link.connected and wire.ups == [NOW]
    pinned = wire.relays.public_key_for("lyon")
    assert pinned == keys.public_key_text(keys.load_or_create_private_key(wire.key_path))
    wire.link.notify("package.synced", {"relay": "lyon"})
    wire.pump()
    assert wire.received[-1] == "package.synced"  # verified with the pinned key
    wire.disconnect()
    assert wire.downs == [NOW] and not wire.link.connected
    wire.connect()  # every session registers again, with the same key
    assert wire.received.count("relay.register") == 2 and len(wire.ups) == 2


def test_nothing_is_said_before_the_master_accepts(wire):
    wire.xs = wire.link.xmpp.factory.buildProtocol(None)
    wire.transport = StringTransport()
    wire.xs.makeConnection(wire.transport)
    wire.xs.dataReceived(HEADER)
    wire.xs.dispatch(wire.xs, xmlstream.STREAM_AUTHD_EVENT)  # no pump: no answer yet
    assert not wire.link.connected and wire.ups == []
    with pytest.raises(LinkDown):
        wire.link.notify("package.synced", {"relay": "lyon"})
    wire.disconnect()  # the session goes before the answer: no down without an up
    assert wire.downs == [] and wire.clock.getDelayedCalls() == []


def test_a_wrong_enrolment_key_is_logged_once_and_retried_less_and_less(tmp_path, logged):
    wire = Wire(tmp_path, enrolment_key="W" * 32)
    wire.connect()
    assert not wire.link.connected
    wire.advance(6 * 3600, step=5.0)
    registers = wire.received.count("relay.register")
    # 5 s growing to 600 s: a handful of tries in the first hour, then one per ~10 min.
    assert 30 <= registers <= 6 * 3600 / (MAX_RETRY * 0.75) + 12
    assert wire.ups == [] and wire.relays.public_key_for("lyon") is None
    errors = [line for line in logged() if "refused" in line]
    assert len(errors) == 1, errors
    assert "401 bad-enrolment-key" in errors[0] and "enrolment_key_file" in errors[0]
    wire.store.close()


def test_a_key_mismatch_is_refused_until_an_admin_resets_the_key(wire, logged):
    other = Ed25519PrivateKey.generate()  # a previous installation of the host enrolled
    _one(wire.relays.register(RELAY, env.Envelope.new(
        "relay.register", registration("lyon", "medulla-syncthing", "0", other, ENROLMENT_KEY),
        now=NOW)))
    assert wire.relays.public_key_for("lyon") == keys.public_key_text(other)
    wire.connect()
    assert not wire.link.connected
    wire.advance(120)
    errors = [line for line in logged() if "refused" in line]
    assert len(errors) == 1 and "409 key-mismatch" in errors[0]
    assert "medullactl relay reset-key" in errors[0]
    wire.relays.reset_key("lyon")
    wire.advance(MAX_RETRY)
    assert wire.link.connected and len(wire.ups) == 1
    assert any("enrolled with the master as relay lyon" in line for line in logged())


def test_losing_the_session_stops_the_retries(tmp_path):
    wire = Wire(tmp_path, enrolment_key="W" * 32)
    wire.connect()
    wire.disconnect()
    registers = wire.received.count("relay.register")
    wire.advance(3600, step=10.0)
    assert wire.received.count("relay.register") == registers  # nothing without a session
    assert wire.link.enrolment._timer is None
    wire.store.close()


def test_the_masters_own_account_does_not_enrol(tmp_path):
    wire = Wire(tmp_path, jid=JID("master@%s/relay" % DOMAIN))
    assert wire.link.enrolment is None
    wire.connect()
    assert wire.received == [] and wire.link.connected and len(wire.ups) == 1
    wire.store.close()


@pytest.mark.parametrize("jid, enrolment_key, message", [
    ("pc-042@medulla.test/relay", ENROLMENT_KEY, "relay-NAME@DOMAIN"),
    ("relay-lyon@medulla.test/relay", None, "[keys] enrolment_key_file: needed"),
    ("relay-lyon@medulla.test/relay", "", "enrolment.key' is empty"),
])
def test_a_relay_link_that_cannot_enrol_stops_the_start(tmp_path, jid, enrolment_key,
                                                        message):
    with pytest.raises((ValueError, core_config.ConfigError)) as err:  # exit 1 or 78
        Wire(tmp_path, jid=JID(jid), enrolment_key=enrolment_key)
    assert message in str(err.value)


def test_medulla_relay_sends_its_status_once_enrolled(tmp_path):
    wire = Wire(tmp_path, service=True)
    wire.connect()
    assert wire.received[:2] == ["relay.register", "relay.status"]
    relay = _one(wire.relays.get_relay("lyon"))
    assert relay["status"] == {"packages_complete": 0, "load": {
        "active_downloads": 0, "clients": 0, "files_served": 0}}
    assert relay["package_url"] == "http://lyon.test:9990" and relay["status_interval"] == 30
    wire.advance(95, step=5.0)
    assert wire.received.count("relay.status") == 4  # at once, then every 30 s
    wire.disconnect()
    wire.advance(300, step=10.0)
    assert wire.received.count("relay.status") == 4  # nothing while down
    wire.store.close()


def _one(d):
    out = []
    d.addBoth(out.append)
    return out[0]
