"""guard.ban / guard.unban to the master through medulla-guard's real ApplianceLink over an
in-memory XMPP stream: a snapshot at every session start, batching, chunking under the
envelope limit, nothing sent while the link is down, refusals logged."""

import json
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.words.protocols.jabber import xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from medulla_appliance.core import config as core_config
from medulla_appliance.core import envelope as env
from medulla_appliance.core import keys
from medulla_appliance.core.xmpp.link import ApplianceLink
from medulla_appliance.guard.config import SCHEMA, Jail, load_filter
from medulla_appliance.guard.logic.bans import Ban
from medulla_appliance.guard.nft import DryRunBackend
from medulla_appliance.guard.notify import (
    ACTION_BAN,
    ACTION_UNBAN,
    MAX_ITEMS_PER_ENVELOPE,
    BanNotifier,
)
from medulla_appliance.guard.service import POLL_EVERY_S, GuardService
from medulla_appliance.testing.pki import CertificateAuthority

NOW = 1_763_820_000.0
GUARD = JID("master@medulla.test/guard")
MASTER = JID("master@medulla.test/master")
HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream="
          b"'http://etherx.jabber.org/streams' from='medulla.test' id='s1' version='1.0'>")
ROOT = pathlib.Path(__file__).resolve().parents[2]
FAIL = "Failed password for root from %s port 4242 ssh2\n"


class Wire:
    """The guard's ApplianceLink, built from a real guard.ini, with its XMPP stream in
    memory: ``connect()`` is a session coming up, ``envelopes()`` what reached the
    master (verified with the master's key: on the master host the guard signs with it)."""

    def __init__(self, tmp):
        self.tmp = tmp
        password = tmp / "xmpp.password"
        password.write_text("secret\n")
        password.chmod(0o600)
        self.key_path = tmp / "master.key"
        self.key = keys.load_or_create_private_key(str(self.key_path))
        ini = tmp / "guard.ini"
        ini.write_text(
            "[guard]\nbackend = dryrun\nstate_dir = %s\ncontrol_socket = %s\n"
            "[xmpp]\njid = %s\npassword_file = %s\nmaster_jid = %s\nca_file = %s\n"
            "[keys]\nprivate_key = %s\n"
            % (tmp / "state", tmp / "run/c.sock", GUARD.full(), password, MASTER.full(),
               CertificateAuthority.create(tmp / "ca").cert_path, self.key_path))
        self.cfg = core_config.load(str(ini), SCHEMA)
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        self.link = ApplianceLink(self.cfg, self.clock, name="medulla-guard")
        self.xs = self.transport = None

    def connect(self):
        self.xs = self.link.xmpp.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.xs.makeConnection(self.transport)
        self.xs.dataReceived(HEADER)
        self.xs.dispatch(self.xs, xmlstream.STREAM_AUTHD_EVENT)

    def disconnect(self):
        self.xs.connectionLost(None)

    def receive(self, element):
        self.xs.dataReceived(element.toXml().encode())

    def envelopes(self):
        """The envelopes sent to the master since last time."""
        data = self.transport.value()
        self.transport.clear()
        start = data.find(b"<message")
        stanzas = []
        parser = domish.elementStream()
        parser.DocumentStartEvent = lambda root: None
        parser.ElementEvent = stanzas.append
        parser.DocumentEndEvent = lambda: None
        parser.parse(HEADER + (data[start:] if start >= 0 else b""))
        out = []
        for stanza in stanzas:
            if stanza.name != "message":
                continue  # keepalive pings and the like
            assert stanza["to"] == MASTER.full()
            out.append(env.open_envelope(str(stanza.body), self.key.public_key(),
                                         GUARD.full(), MASTER.full(),
                                         env.ReplayGuard(self.clock)))
        return out


@pytest.fixture
def wire(tmp_path):
    return Wire(tmp_path)


def ban(address, jail="sshd", seconds=600, manual=False, at=NOW):
    return Ban(address, jail, at, at + seconds, 1, 0 if manual else 5, manual)


def notifier(wire, bans=(), **kw):
    n = BanNotifier(wire.link, wire.clock, lambda: list(bans), **kw)
    wire.link.on_session(n.session_up, n.session_down)
    return n


def sent(envelopes):
    return [(e.action, e.data) for e in envelopes]


def test_every_session_starts_with_a_snapshot_of_the_bans_in_force(wire):
    notifier(wire, [ban("203.0.113.9"), ban("2001:db8::5", "manual", 3600, manual=True)])
    wire.connect()
    assert sent(wire.envelopes()) == [(ACTION_BAN, {"snapshot": True, "bans": [
        {"address": "2001:db8::5", "jail": "manual", "failures": 0, "banned_at": NOW,
         "until": NOW + 3600, "manual": True},
        {"address": "203.0.113.9", "jail": "sshd", "failures": 5, "banned_at": NOW,
         "until": NOW + 600, "manual": False}]})]
    wire.disconnect()
    wire.connect()
    assert [d["snapshot"] for _, d in sent(wire.envelopes())] == [True]


def test_an_empty_snapshot_is_sent_too_so_the_master_forgets_old_bans(wire):
    notifier(wire)
    wire.connect()
    assert sent(wire.envelopes()) == [(ACTION_BAN, {"snapshot": True, "bans": []})]


def test_events_are_batched_and_the_last_word_on_an_address_wins(wire):
    n = notifier(wire)
    wire.connect()
    wire.envelopes()
    n.banned(ban("198.51.100.1"))
    n.unbanned(ban("198.51.100.1"), "admin")
    n.banned(ban("198.51.100.2"))
    n.unbanned(ban("198.51.100.3"), "expired")
    assert wire.envelopes() == []  # gathered for a second
    wire.clock.advance(1)
    assert sent(wire.envelopes()) == [
        (ACTION_BAN, {"snapshot": False, "bans": [
            {"address": "198.51.100.2", "jail": "sshd", "failures": 5, "banned_at": NOW,
             "until": NOW + 600, "manual": False}]}),
        (ACTION_UNBAN, {"unbans": [
            {"address": "198.51.100.1", "jail": "sshd", "reason": "admin"},
            {"address": "198.51.100.3", "jail": "sshd", "reason": "expired"}]})]


def test_nothing_is_sent_while_down_and_the_next_snapshot_says_it_all(wire):
    bans = [ban("198.51.100.1")]
    n = notifier(wire, bans)
    n.banned(bans[0])  # before any session: not queued
    wire.clock.advance(5)
    wire.connect()
    assert [d["snapshot"] for _, d in sent(wire.envelopes())] == [True]
    n.banned(ban("198.51.100.9"))
    wire.disconnect()  # the pending batch dies with the session
    n.unbanned(bans.pop(), "expired")
    bans.append(ban("198.51.100.7"))
    n.banned(bans[0])
    wire.clock.advance(5)
    assert wire.transport.value().count(b"<message") == 0
    wire.connect()
    assert sent(wire.envelopes()) == [(ACTION_BAN, {"snapshot": True, "bans": [
        {"address": "198.51.100.7", "jail": "sshd", "failures": 5, "banned_at": NOW,
         "until": NOW + 600, "manual": False}]})]


def test_a_snapshot_is_sent_again_periodically_so_a_restarted_master_catches_up(wire):
    bans = [ban("198.51.100.1")]
    notifier(wire, bans, snapshot_interval=60)
    wire.connect()
    assert [d["snapshot"] for _, d in sent(wire.envelopes())] == [True]
    bans.append(ban("198.51.100.2"))  # as if its guard.ban was lost with the master
    wire.clock.advance(59)
    assert wire.envelopes() == []
    wire.clock.advance(1)
    [(action, data)] = sent(wire.envelopes())
    assert data["snapshot"] and [b["address"] for b in data["bans"]] == [
        "198.51.100.1", "198.51.100.2"]
    wire.disconnect()
    wire.clock.advance(600)
    assert wire.transport.value().count(b"<message") == 0  # nothing while down


def test_a_big_snapshot_or_batch_is_split_and_only_the_first_part_resets(wire):
    bans = [ban("198.51.100.%d" % i) for i in range(7)]
    n = notifier(wire, bans, max_items=3)
    wire.connect()
    parts = [d for _, d in sent(wire.envelopes())]
    assert [p["snapshot"] for p in parts] == [True, False, False]
    assert [len(p["bans"]) for p in parts] == [3, 3, 1]
    for i in range(4):
        n.unbanned(ban("192.0.2.%d" % i), "expired")
    wire.clock.advance(1)
    assert [len(d["unbans"]) for _, d in sent(wire.envelopes())] == [3, 1]


def test_a_full_envelope_of_the_longest_bans_fits_the_envelope_limit():
    # The longest address and jail name a ban can have, MAX_ITEMS_PER_ENVELOPE times.
    address = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    entries = [{"address": address, "jail": "j" * 32, "failures": 1000,
                "banned_at": NOW + i / 7, "until": NOW + 31_536_000 + i / 3, "manual": False}
               for i in range(MAX_ITEMS_PER_ENVELOPE)]
    envelope = env.Envelope.new(ACTION_BAN, {"snapshot": True, "bans": entries}, now=NOW)
    key = Ed25519PrivateKey.generate()
    encoded = env.encode(envelope, key, GUARD.full(), MASTER.full())
    assert len(encoded.encode()) < env.MAX_ENVELOPE_BYTES
    assert len(json.dumps(entries)) < env.MAX_INFLATED_BYTES


def test_refusals_from_the_master_are_logged_and_never_answered(wire):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        notifier(wire)
        wire.connect()
        (snapshot,) = wire.envelopes()
        refusal = snapshot.reply({"error": "bad-field", "message": "bans[0].address: not "
                                  "an IP address"}, ret=400, now=NOW)
        stanza = domish.Element(("jabber:client", "message"))
        stanza["from"], stanza["to"], stanza["type"] = MASTER.full(), GUARD.full(), "chat"
        stanza.addElement("body", content=env.encode(refusal, wire.key, MASTER.full(),
                                                     GUARD.full()))
        wire.receive(stanza)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert wire.envelopes() == []
    lines = [formatEvent(e) for e in logged
             if e.get("log_namespace", "").startswith("medulla_appliance")]
    assert "the master refused guard.ban: 400 bans[0].address: not an IP address" in lines


# -- the service tells the notifier ------------------------------------------------------

def test_the_service_reports_bans_expiries_and_admin_unbans(wire, tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("")
    sshd = load_filter("sshd", str(ROOT / "etc/guard.d/filters/sshd.ini"))
    backend = DryRunBackend(wire.clock)
    backend.elements = {"203.0.113.50": NOW + 900}  # in the firewall at start
    svc = GuardService(wire.cfg, wire.clock, [Jail("sshd", sshd, ("file:%s" % log,),
                                                   bantime=60)],
                       backend=backend, use_inotify=False, local=[], link=wire.link)
    svc.startService()
    wire.connect()
    [(action, snapshot)] = sent(wire.envelopes())
    assert snapshot["snapshot"] and [b["address"] for b in snapshot["bans"]] == ["203.0.113.50"]
    with open(log, "a") as f:
        f.write(FAIL % "198.51.100.7" * 5)
    wire.clock.advance(POLL_EVERY_S)
    assert list(backend.elements) == ["203.0.113.50", "198.51.100.7"]  # before any word
    wire.clock.advance(1)
    [(action, data)] = sent(wire.envelopes())
    assert action == ACTION_BAN and data["bans"][0]["address"] == "198.51.100.7"
    assert data["bans"][0]["failures"] == 5 and data["bans"][0]["jail"] == "sshd"
    assert data["bans"][0]["until"] - data["bans"][0]["banned_at"] == 60
    wire.clock.advance(65)  # the ban runs out; the state tick notices
    wire.clock.advance(1)
    assert sent(wire.envelopes()) == [(ACTION_UNBAN, {"unbans": [
        {"address": "198.51.100.7", "jail": "sshd", "reason": "expired"}]})]
    assert defer.ensureDeferred(svc.control_unban("203.0.113.50")).called
    wire.clock.advance(1)
    assert sent(wire.envelopes()) == [(ACTION_UNBAN, {"unbans": [
        {"address": "203.0.113.50", "jail": "restored", "reason": "admin"}]})]
    assert defer.ensureDeferred(svc.control_ban("2001:db8::9", 120)).called
    wire.clock.advance(1)
    [(action, data)] = sent(wire.envelopes())
    assert data["bans"][0]["manual"] is True and data["bans"][0]["jail"] == "manual"
    assert "master connected" in svc.status_line()
    svc.stopService()
