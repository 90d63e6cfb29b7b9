"""The master's fleet view of medulla-guard's bans: guard.ban / guard.unban stored per
host (snapshots replace, runs-outs dropped), every field checked (a bad entry refuses
the whole envelope), forged senders refused by the master's real trust, and
GET /api/v1/bans."""

import math
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core import config as core_config
from medulla_appliance.core import envelope as env
from medulla_appliance.core import keys
from medulla_appliance.core.store import Store
from medulla_appliance.core.xmpp.channel import Refusal
from medulla_appliance.master import storage
from medulla_appliance.master.api_bans import BanRoutes
from medulla_appliance.master.bans import Bans
from medulla_appliance.master.config import SCHEMA as MASTER_SCHEMA
from medulla_appliance.master.relays import Origin
from medulla_appliance.master.service import MasterService
from medulla_appliance.testing.pki import CertificateAuthority
from tests.unit.api_harness import NOW, FakeRegistry, Harness

GUARD = JID("master@medulla.test/guard")
LYON = JID("relay-lyon@medulla.test/guard")
AGENT = JID("pc-01.k3x@medulla.test/5254")


def origin_of(sender):
    if sender.userhost() == "master@medulla.test" and sender.resource != "master":
        return Origin("master", master_host=True)
    if sender.userhost() == "relay-lyon@medulla.test":
        return Origin("lyon")
    return None


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "still waiting"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def bans(tmp_path):
    clock = Clock()
    clock.advance(NOW)
    store = Store("sqlite:%s" % (tmp_path / "m.sqlite"), storage.MIGRATIONS, threaded=False)
    yield Bans(store, clock, origin_of)
    store.close()


def entry(address, jail="sshd", seconds=600, at=NOW, failures=5, manual=False):
    return {"address": address, "jail": jail, "failures": failures, "banned_at": at,
            "until": at + seconds, "manual": manual}


def ban(bans, sender, items, snapshot=False):
    return result(defer.ensureDeferred(bans.on_ban(
        sender, SimpleNamespace(data={"snapshot": snapshot, "bans": items}))))


def unban(bans, sender, *addresses, reason="expired"):
    return result(defer.ensureDeferred(bans.on_unban(sender, SimpleNamespace(data={
        "unbans": [{"address": a, "jail": "sshd", "reason": reason} for a in addresses]}))))


def listed(bans, host=None):
    return [(b["host"], b["address"]) for b in result(bans.active(host))]


def test_bans_are_listed_by_host_and_unbans_lift_them(bans):
    ban(bans, GUARD, [entry("203.0.113.7"), entry("2001:DB8::5", "manual", 3600, manual=True,
                                                  failures=0)])
    ban(bans, LYON, [entry("198.51.100.1", seconds=60)])
    assert listed(bans) == [("lyon", "198.51.100.1"), ("master", "203.0.113.7"),
                            ("master", "2001:db8::5")]
    [manual] = [b for b in result(bans.active("master")) if b["manual"]]
    assert manual["jail"] == "manual" and manual["until"] == NOW + 3600
    unban(bans, GUARD, "203.0.113.7", reason="admin")
    unban(bans, LYON, "2001:db8::5")  # lyon cannot lift the master host's ban
    assert listed(bans, "master") == [("master", "2001:db8::5")]


def test_a_snapshot_replaces_the_bans_of_its_host_only(bans):
    ban(bans, GUARD, [entry("203.0.113.7"), entry("203.0.113.8")])
    ban(bans, LYON, [entry("198.51.100.1")])
    ban(bans, GUARD, [entry("203.0.113.9")], snapshot=True)
    ban(bans, GUARD, [entry("203.0.113.10")])  # the snapshot's continuation adds
    assert listed(bans) == [("lyon", "198.51.100.1"), ("master", "203.0.113.10"),
                            ("master", "203.0.113.9")]
    ban(bans, LYON, [], snapshot=True)  # nothing in force on lyon any more
    assert listed(bans, "lyon") == []


def test_bans_that_ran_out_are_not_listed_and_are_dropped(bans):
    ban(bans, GUARD, [entry("203.0.113.7", seconds=60), entry("203.0.113.8", seconds=600)])
    bans.clock.advance(61)
    assert listed(bans) == [("master", "203.0.113.8")]
    ban(bans, LYON, [entry("198.51.100.1", at=NOW + 61)])  # any write deletes old rows
    rows = result(bans.store.run(lambda conn: conn.execute(
        "SELECT address FROM bans ORDER BY address").fetchall()))
    assert [r[0] for r in rows] == ["198.51.100.1", "203.0.113.8"]


HOSTILE = [
    # (what was tried, the entry's changes, the field named in the refusal)
    ("a user-controlled text", {"address": "admin from 10.0.0.1"}, "bans[1].address"),
    ("an address with a newline", {"address": "10.0.0.1\n"}, "bans[1].address"),
    ("a scoped IPv6 address", {"address": "fe80::1%eth0"}, "bans[1].address"),
    ("a number for an address", {"address": 167772161}, "bans[1].address"),
    ("a jail with an escape sequence", {"jail": "ssh\x1b[31md"}, "bans[1].jail"),
    ("a jail with a newline", {"jail": "sshd\nfake log line"}, "bans[1].jail"),
    ("a jail name too long", {"jail": "j" * 33}, "bans[1].jail"),
    ("failures as a boolean", {"failures": True}, "bans[1].failures"),
    ("negative failures", {"failures": -1}, "bans[1].failures"),
    ("banned_at as text", {"banned_at": "yesterday"}, "bans[1].banned_at"),
    ("banned_at not a number", {"banned_at": math.nan}, "bans[1].banned_at"),
    ("banned_at at the epoch", {"banned_at": 0, "until": 600}, "bans[1].banned_at"),
    ("banned_at years ahead", {"banned_at": NOW + 3e8, "until": NOW + 3e8 + 60},
     "bans[1].banned_at"),
    ("until before banned_at", {"until": NOW - 1}, "bans[1].until"),
    ("a ban of ten years", {"until": NOW + 10 * 365 * 86400}, "bans[1].until"),
    ("until infinite", {"until": math.inf}, "bans[1].until"),
    ("manual as text", {"manual": "yes"}, "bans[1].manual"),
]


@pytest.mark.parametrize("what,changes,field", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_bad_entry_refuses_the_whole_envelope(bans, what, changes, field):
    bad = dict(entry("203.0.113.8"), **changes)
    with pytest.raises(Refusal) as refused:
        ban(bans, GUARD, [entry("203.0.113.7"), bad])
    assert refused.value.code == 400 and refused.value.error == "bad-field"
    assert refused.value.message.startswith(field + ":")
    assert "\n" not in refused.value.message and "\x1b" not in refused.value.message
    assert listed(bans) == []  # not even the good entry before it


@pytest.mark.parametrize("data,field", [
    ({"snapshot": "true", "bans": []}, "snapshot"),
    ({"bans": {"address": "203.0.113.7"}}, "bans"),
    ({"bans": [entry("203.0.113.7")] * 1001}, "bans"),
    ({}, "bans"),
    ({"bans": ["203.0.113.7"]}, "bans[0]"),
])
def test_malformed_ban_envelopes_are_refused(bans, data, field):
    with pytest.raises(Refusal) as refused:
        result(defer.ensureDeferred(bans.on_ban(GUARD, SimpleNamespace(data=data))))
    assert refused.value.message.startswith(field + ":")


@pytest.mark.parametrize("item,field", [
    ({"address": "x", "jail": "sshd", "reason": "expired"}, "unbans[0].address"),
    ({"address": "203.0.113.7", "jail": "sshd", "reason": "mercy"}, "unbans[0].reason"),
    ({"address": "203.0.113.7", "jail": "", "reason": "admin"}, "unbans[0].jail"),
])
def test_malformed_unbans_are_refused_and_lift_nothing(bans, item, field):
    ban(bans, GUARD, [entry("203.0.113.7")])
    with pytest.raises(Refusal) as refused:
        result(defer.ensureDeferred(bans.on_unban(GUARD, SimpleNamespace(
            data={"unbans": [item]}))))
    assert refused.value.message.startswith(field + ":")
    assert listed(bans) == [("master", "203.0.113.7")]


def test_a_sender_that_is_no_appliance_daemon_is_refused_by_the_handler_too(bans):
    with pytest.raises(Refusal) as refused:
        ban(bans, AGENT, [entry("203.0.113.7")])
    assert refused.value.code == 403
    assert listed(bans) == []


# -- the master's real trust: who may send guard.ban at all ------------------------------

@pytest.fixture
def master(tmp_path):
    """A MasterService built from a real master.ini (not started); its Bans run the store
    inline, on the same database file."""
    password = tmp_path / "master.password"
    password.write_text("pw\n")
    enrolment = tmp_path / "enrolment.key"
    enrolment.write_text("A" * 32 + "\n")
    for secret in (password, enrolment):
        secret.chmod(0o600)
    ca = CertificateAuthority.create(tmp_path / "ca")
    ini = tmp_path / "master.ini"
    ini.write_text(
        "[xmpp]\njid = master@medulla.test/master\npassword_file = %s\nca_file = %s\n"
        "[keys]\nprivate_key = %s\nenrolment_key_file = %s\n[store]\nurl = sqlite:%s\n"
        "[api]\ntoken_file = %s\n[deploy]\npackages_root = %s\n" % (
            password, ca.cert_path, tmp_path / "master.key", enrolment,
            tmp_path / "master.sqlite", tmp_path / "api-token", tmp_path / "packages"))
    clock = MemoryReactorClock()
    clock.advance(NOW)
    svc = MasterService(core_config.load(str(ini), MASTER_SCHEMA), clock)
    inline = Store("sqlite:%s" % (tmp_path / "master.sqlite"), storage.MIGRATIONS,
                   threaded=False)
    svc.bans.store = inline
    sent = []
    svc.channel.messages.send_body = lambda recipient, body: sent.append((recipient, body))
    yield svc, sent
    inline.close()
    svc.store.close()


def deliver(svc, sender, key, data, action="guard.ban"):
    envelope = env.Envelope.new(action, data, now=NOW)
    svc.channel._receive(sender, env.encode(envelope, key, sender.full(), svc.jid.full()))


def test_only_the_appliances_own_daemons_may_send_guard_ban(master):
    svc, sent = master
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        agent_key = keys.generate_private_key()
        # An agent's account, signing with its own key: not an appliance daemon.
        deliver(svc, AGENT, agent_key, {"snapshot": True, "bans": [entry("203.0.113.66")]})
        # The master's account with another resource but not the master's key.
        deliver(svc, GUARD, agent_key, {"bans": [entry("203.0.113.67")]})
        # A relay account that never enrolled.
        deliver(svc, LYON, agent_key, {"bans": [entry("203.0.113.68")]})
        assert listed(svc.bans) == [] and sent == []  # dropped, never answered
        # This host's medulla-guard: the master's account and key.
        deliver(svc, GUARD, svc.private_key, {"snapshot": True,
                                              "bans": [entry("203.0.113.7")]})
        assert listed(svc.bans) == [("master", "203.0.113.7")]
        # and a bad field from it is answered with a refusal it can log
        deliver(svc, GUARD, svc.private_key, {"bans": [entry("not-an-ip")]})
    finally:
        globalLogPublisher.removeObserver(logged.append)
    lines = [formatEvent(e) for e in logged]
    assert sum("refused guard.ban" in line and "untrusted-sender" in line
               for line in lines) == 2
    assert any("refused guard.ban" in line and "bad-signature" in line for line in lines)
    [(recipient, body)] = sent
    answer = env.open_envelope(body, svc.private_key.public_key(), svc.jid.full(),
                               GUARD.full(), env.ReplayGuard(svc.reactor))
    assert answer.action == "result.guard.ban" and answer.ret == 400
    assert answer.data["message"].startswith("bans[0].address: not an IP address")


# -- GET /api/v1/bans --------------------------------------------------------------------

@pytest.fixture
def http(bans):
    harness = Harness(FakeRegistry(), route_groups=(BanRoutes(bans, bans.clock),))
    yield harness
    harness.close()


def test_the_api_lists_active_bans_of_all_hosts_or_one(http, bans):
    ban(bans, GUARD, [entry("203.0.113.7", seconds=600)])
    ban(bans, LYON, [entry("198.51.100.1", seconds=60)])
    r = http.get("/api/v1/bans")
    assert r.code == 200 and r.json["server_time"] == NOW
    assert [(b["host"], b["address"], b["jail"], b["until"]) for b in r.json["bans"]] == [
        ("lyon", "198.51.100.1", "sshd", NOW + 60), ("master", "203.0.113.7", "sshd",
                                                     NOW + 600)]
    assert [b["address"] for b in http.get("/api/v1/bans?host=lyon").json["bans"]] == [
        "198.51.100.1"]
    bans.clock.advance(61)
    assert [b["host"] for b in http.get("/api/v1/bans").json["bans"]] == ["master"]


@pytest.mark.parametrize("query", ["?host=", "?host=%1B%5B31m", "?host=a&host=b",
                                   "?host=%FF"])
def test_a_bad_host_parameter_is_400(http, query):
    r = http.get("/api/v1/bans" + query)
    assert r.code == 400 and r.json["error"] == "bad-request"
