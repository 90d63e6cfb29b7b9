"""The master's enrolment actions: whose key an envelope must verify with, the checks on a
registration, admission, and what the agent gets back. A real Registry over a
threaded=False Store; presence is a recording fake."""

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core import envelope as env
from medulla_appliance.core import keys
from medulla_appliance.core.store import Store
from medulla_appliance.core.xmpp.channel import EnvelopeChannel, Refusal
from medulla_appliance.master import storage
from medulla_appliance.master.logic.admission import Admission
from medulla_appliance.master.logic.assessor import Assessor, Relay
from medulla_appliance.master.protocol import EnrolmentActions
from medulla_appliance.master.registry import Registry
from tests.unit.deferreds import result_of

NOW = 1_763_820_000.0
DOMAIN = "medulla.example"
ENROLMENT_KEY = "0123456789abcdef0123456789abcdef"
MASTER = JID("master@medulla.example/master")
MASTER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY1 = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEY2 = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))


class Presence:
    def __init__(self):
        self.befriended = []

    def befriend(self, jid):
        self.befriended.append(jid)


class Agent:
    def __init__(self, hostname="pc01", mac="0a:1b:2c:3d:4e:5f", key=KEY1, suffix="ab1",
                 ips=("10.1.0.7",)):
        self.hostname, self.mac, self.key, self.ips = hostname, mac, key, list(ips)
        self.jid = JID("%s.%s@%s/%s" % (hostname, suffix, DOMAIN, mac.replace(":", "")))

    def data(self, enrolment_key=ENROLMENT_KEY, **changes):
        data = {"hostname": self.hostname, "macs": [self.mac], "ips": self.ips,
                "os": "Debian 12", "agent_version": "1.0.0", "inventory_tag": "",
                "public_key": keys.public_key_text(self.key), "services": {"ssh": True}}
        data.update(changes)
        data["psk_mac"] = keys.registration_mac(enrolment_key, data)
        return data

    def envelope(self, action="agent.register", data=None, **changes):
        return env.Envelope.new(action, self.data(**changes) if data is None else data,
                                now=NOW)

    def signed(self, envelope):
        return env.decode(env.encode(envelope, self.key, self.jid.full(), MASTER.full()))


class Master:
    def __init__(self, tmp_path, rate=10):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = Store("sqlite:" + str(tmp_path / "m.sqlite"), storage.MIGRATIONS,
                           threaded=False)
        counter = itertools.count(1)
        self.registry = Registry(self.store, self.clock, (),
                                 new_uuid=lambda: "m-%d" % next(counter))
        result_of(self.registry.load())
        self.assessor = Assessor([Relay("lyon", "relay-lyon.example", 5222)],
                                 ["subnet 10.1.0.0/16 lyon"], "master")
        self.admission = Admission(rate, self.clock, burst=rate, rand=lambda: 0.5)
        self.presence = Presence()
        self.actions = EnrolmentActions(self.registry, self.assessor, self.admission,
                                        ENROLMENT_KEY, DOMAIN, self.presence)

    def register(self, agent, **changes):
        return self.actions.register(agent.jid, agent.envelope(**changes))


@pytest.fixture
def master(tmp_path):
    master = Master(tmp_path)
    yield master
    master.store.close()


def refusal(fn, *args):
    with pytest.raises(Refusal) as info:
        result = fn(*args)
        if hasattr(result, "addBoth"):
            result_of(result)
    return info.value


def public_bytes(key):
    return keys.public_key_text(key)


# -- trust -------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["agent.assess", "agent.register"])
def test_enrolment_actions_verify_with_the_key_they_carry(master, action):
    agent = Agent()
    key = master.actions.trust(agent.jid, agent.signed(agent.envelope(action)))
    assert public_bytes(key) == public_bytes(KEY1)


def test_a_pinned_agent_claiming_another_key_is_refused_409(master):
    result_of(master.register(Agent()))
    other = Agent(key=KEY2)                          # same JID, new key
    error = refusal(master.actions.trust, other.jid, other.signed(other.envelope()))
    assert (error.code, error.error) == (409, "key-mismatch")


def test_a_pinned_agent_with_its_own_key_is_trusted(master):
    agent = Agent()
    result_of(master.register(agent))
    key = master.actions.trust(agent.jid, agent.signed(agent.envelope("agent.assess")))
    assert public_bytes(key) == public_bytes(KEY1)


@pytest.mark.parametrize("public_key", [None, 42, "", "ssh-ed25519 AAAA", "ed25519:short"])
def test_a_missing_or_bad_public_key_is_refused_400(master, public_key):
    agent = Agent()
    data = agent.data()
    if public_key is None:
        del data["public_key"]
    else:
        data["public_key"] = public_key
    error = refusal(master.actions.trust, agent.jid, agent.signed(agent.envelope(data=data)))
    assert (error.code, error.error) == (400, "bad-field")


def test_other_actions_use_the_pinned_key_or_nobody(master):
    agent = Agent()
    signed = agent.signed(agent.envelope("inventory.report", data={"public_key": "x"}))
    assert master.actions.trust(agent.jid, signed) is None
    result_of(master.register(agent))
    key = master.actions.trust(agent.jid, signed)
    assert public_bytes(key) == public_bytes(KEY1)
    assert master.actions.trust(JID("pc01.ab1@medulla.example/other"), signed) is not None
    assert master.actions.trust(JID("pc09.ab1@medulla.example/x"), signed) is None


# -- checks on the facts -----------------------------------------------------------------

@pytest.mark.parametrize("action", ["assess", "register"])
def test_a_registration_with_a_wrong_enrolment_key_is_refused_401(master, action):
    agent = Agent()
    envelope = agent.envelope(enrolment_key="f" * 32)
    error = refusal(getattr(master.actions, action), agent.jid, envelope)
    assert (error.code, error.error) == (401, "bad-enrolment-key")
    assert result_of(master.registry.status())["machines"]["total"] == 0


def test_a_tampered_registration_is_refused_401(master):
    agent = Agent()
    data = agent.data()
    data["hostname"] = "pc99"                       # changed after the MAC was made
    error = refusal(master.actions.register, agent.jid, agent.envelope(data=data))
    assert error.code == 401


@pytest.mark.parametrize("psk_mac", [None, 7, ""])
def test_a_registration_without_a_usable_psk_mac_is_refused_401(master, psk_mac):
    agent = Agent()
    data = agent.data()
    if psk_mac is None:
        del data["psk_mac"]
    else:
        data["psk_mac"] = psk_mac
    assert refusal(master.actions.register, agent.jid, agent.envelope(data=data)).code == 401


def test_a_sender_not_matching_the_facts_is_refused_403(master):
    agent = Agent()
    impostor = JID("pc02.ab1@medulla.example/0a1b2c3d4e5f")
    error = refusal(master.actions.register, impostor, agent.envelope())
    assert (error.code, error.error) == (403, "sender-mismatch")
    assert master.presence.befriended == []


def test_bad_facts_with_a_good_mac_are_refused_400(master):
    agent = Agent()
    error = refusal(master.actions.register, agent.jid, agent.envelope(macs=["nonsense"]))
    assert (error.code, error.error) == (400, "bad-field")


def test_assess_answers_with_the_relay_for_the_agents_addresses(master):
    lyon, elsewhere = Agent(), Agent("pc02", "0a:1b:2c:3d:4e:60", ips=("192.168.0.2",))
    assert master.actions.assess(lyon.jid, lyon.envelope("agent.assess")) == {
        "relay": "lyon", "server": "relay-lyon.example", "port": 5222}
    assert master.actions.assess(elsewhere.jid, elsewhere.envelope("agent.assess")) == {
        "relay": "master", "server": None, "port": None}
    assert master.admission.admit() is None         # assessing costs no admission


# -- register ----------------------------------------------------------------------------

def test_register_enrols_befriends_and_answers(master):
    agent = Agent()
    answer = result_of(master.register(agent))
    assert answer == {"uuid": "m-1", "hostname": "pc01", "relay": "lyon"}
    assert master.presence.befriended == [agent.jid]
    assert master.registry.public_key_for(agent.jid.userhost()) == keys.public_key_text(KEY1)
    (m,) = result_of(master.registry.find_machines("pc01"))
    assert m["key_fingerprint"] == keys.fingerprint(KEY1.public_key())
    assert (m["relay"], m["services"]) == ("lyon", ["ssh"])


def test_above_the_rate_registration_is_refused_429_with_retry_after(tmp_path):
    master = Master(tmp_path, rate=1)
    result_of(master.register(Agent()))
    late = Agent("pc02", "0a:1b:2c:3d:4e:60", key=KEY2)
    error = refusal(master.register, late)
    assert (error.code, error.error) == (429, "busy")
    assert error.extra == {"retry_after": 2.5}       # 1 s + one 1 s slot x (1 + 0.5)
    assert master.presence.befriended == [Agent().jid]
    assert result_of(master.registry.status())["machines"]["total"] == 1
    master.clock.advance(1)
    assert result_of(master.register(late))["uuid"] == "m-2"
    master.store.close()


def test_a_mac_enrolled_with_another_key_is_refused_409(master):
    result_of(master.register(Agent()))
    reinstalled = Agent(key=KEY2, suffix="zz9")
    error = refusal(master.register, reinstalled)
    assert (error.code, error.error) == (409, "key-mismatch")
    assert "reset-key" in error.message
    assert master.presence.befriended == [Agent().jid]


# -- through the envelope channel --------------------------------------------------------

def test_an_agent_registers_over_signed_envelopes(master):
    channel = EnvelopeChannel(MASTER, MASTER_KEY, master.clock, master.actions.trust)
    channel.handle("agent.register", master.actions.register)
    sent = []
    channel.messages.send_body = lambda recipient, body: sent.append((recipient, body))
    first, second = Agent(), Agent("pc02", "0a:1b:2c:3d:4e:60", key=KEY2)
    master.admission = master.actions.admission = Admission(1, master.clock, rand=lambda: 0.0)
    for agent in (first, second):
        body = env.encode(agent.envelope(), agent.key, agent.jid.full(), MASTER.full())
        channel._receive(agent.jid, body)
    replies = [env.open_envelope(body, MASTER_KEY.public_key(), MASTER.full(), to.full(),
                                 env.ReplayGuard(master.clock)) for to, body in sent]
    assert [(to, r.ret) for (to, _), r in zip(sent, replies, strict=True)] == [
        (first.jid, 0), (second.jid, 429)]
    assert replies[0].data == {"uuid": "m-1", "hostname": "pc01", "relay": "lyon"}
    assert replies[1].data["retry_after"] == 2.0 and replies[1].data["error"] == "busy"
