"""The master's registry over a real SQLite store (threaded=False: Deferreds fire at once)
and a task.Clock: enrolment, renames, presence, liveness, and a restart of the master."""

import itertools

import pytest
from twisted.internet.task import Clock
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core.store import Store
from medulla_appliance.master import storage
from medulla_appliance.master.logic.identity import Refused, parse_facts
from medulla_appliance.master.registry import RECONNECT_RACE_SECONDS, SUSPECT_PINGS, Registry
from tests.unit.deferreds import failure_of, result_of

DOMAIN = "medulla.example"
VMWARE = "00:50:56:c0:00:01"


class Agent:
    """One workstation: its facts, key and JID."""

    def __init__(self, hostname, macs, key, suffix="ab1"):
        self.hostname, self.macs, self.key, self.suffix = hostname, macs, key, suffix

    @property
    def facts(self):
        return parse_facts({"hostname": self.hostname, "macs": self.macs, "ips": ["10.1.0.7"],
                            "public_key": "ed25519:" + self.key, "os": "Debian 12"})

    @property
    def fingerprint(self):
        return "SHA256:" + self.key

    @property
    def jid(self):
        return JID("%s.%s@%s/%s" % (self.hostname.lower(), self.suffix, DOMAIN,
                                    self.macs[-1].replace(":", "")))


@pytest.fixture
def path(tmp_path):
    return "sqlite:" + str(tmp_path / "m.sqlite")


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(1_000_000)
    return clock


def open_registry(path, clock, blacklist=(VMWARE,)):
    store = Store(path, storage.MIGRATIONS, threaded=False)
    counter = itertools.count(1)
    registry = Registry(store, clock, blacklist, new_uuid=lambda: "m-%d" % next(counter))
    result_of(registry.load())
    return registry


@pytest.fixture
def registry(path, clock):
    registry = open_registry(path, clock)
    yield registry
    registry.store.close()


def register(registry, agent, relay="master"):
    return result_of(registry.register(agent.jid, agent.facts, agent.fingerprint, relay))


def events(registry, uid):
    return [(e["event"], e["detail"]) for e in result_of(registry.machine_history(uid))]


def machine(registry, name):
    found = result_of(registry.find_machines(name))
    assert len(found) == 1, found
    return found[0]


PC01 = Agent("pc01", ["0a:1b:2c:3d:4e:5f"], "key1")
PC02 = Agent("pc02", ["0a:1b:2c:3d:4e:60"], "key2")


def test_a_new_machine_is_registered_and_online(registry):
    uid = register(registry, PC01, relay="lyon")
    assert uid == "m-1"
    assert [e for e, _ in events(registry, uid)] == ["online", "registered"]
    m = machine(registry, "pc01")
    assert (m["uuid"], m["online"], m["relay"], m["jid"]) == (
        uid, True, "lyon", PC01.jid.full())
    assert m["macs"] == ["0a:1b:2c:3d:4e:5f"] and m["key_fingerprint"] == "SHA256:key1"
    assert registry.public_key_for(PC01.jid.userhost()) == "ed25519:key1"
    assert registry.uuid_for(PC01.jid) == uid


def test_registering_again_in_the_same_session_adds_no_history(registry):
    uid = register(registry, PC01)
    assert register(registry, PC01) == uid
    assert len(events(registry, uid)) == 2


def test_same_key_under_a_new_hostname_is_the_same_machine_renamed(registry):
    uid = register(registry, PC01)
    renamed = Agent("pc01-new", PC01.macs, PC01.key, suffix="zz9")
    assert register(registry, renamed) == uid
    assert ("renamed", "pc01 -> pc01-new") in events(registry, uid)
    assert registry.uuid_for(PC01.jid) is None                 # the old JID speaks no more
    assert registry.public_key_for(PC01.jid.userhost()) is None
    assert registry.uuid_for(renamed.jid) == uid
    assert result_of(registry.find_machines("pc01")) == []
    assert machine(registry, "pc01-new")["uuid"] == uid
    assert result_of(registry.status())["machines"]["total"] == 1


def test_a_blacklisted_mac_shared_by_two_machines_keeps_them_apart(registry):
    a = Agent("pc-a", [VMWARE, "0a:00:00:00:00:0a"], "keyA")
    b = Agent("pc-b", [VMWARE, "0a:00:00:00:00:0b"], "keyB")
    only_a = Agent("pc-c", [VMWARE], "keyC")
    only_b = Agent("pc-d", [VMWARE], "keyD")
    uids = {register(registry, x) for x in (a, b, only_a, only_b)}
    assert len(uids) == 4
    assert result_of(registry.status())["machines"]["total"] == 4


def test_a_real_mac_enrolled_with_another_key_is_refused(registry):
    uid = register(registry, PC01)
    impostor = Agent("evil", PC01.macs, "other-key", suffix="xx1")
    error = failure_of(registry.register(impostor.jid, impostor.facts, impostor.fingerprint,
                                         "master"))
    assert isinstance(error, Refused)
    assert (error.code, error.error) == (409, "key-mismatch")
    assert registry.uuid_for(impostor.jid) is None
    assert result_of(registry.status())["machines"]["total"] == 1
    assert machine(registry, uid)["key_fingerprint"] == "SHA256:key1"


def test_after_a_key_reset_the_next_enrolment_pins_the_new_key(registry):
    uid = register(registry, PC01)
    result_of(registry.reset_key(uid))
    assert registry.public_key_for(PC01.jid.userhost()) is None
    reinstalled = Agent("pc01", PC01.macs, "new-key", suffix="q7q")
    assert register(registry, reinstalled) == uid
    assert registry.public_key_for(reinstalled.jid.userhost()) == "ed25519:new-key"
    assert machine(registry, uid)["key_fingerprint"] == "SHA256:new-key"
    assert "key-reset" in [e for e, _ in events(registry, uid)]


def test_unavailable_then_available_is_recorded(registry, clock):
    uid = register(registry, PC01)
    clock.advance(10)
    result_of(registry.unavailable(PC01.jid))
    assert machine(registry, uid)["online"] is False
    clock.advance(5)
    result_of(registry.available(PC01.jid))
    m = machine(registry, uid)
    assert m["online"] is True and m["last_seen"] == clock.seconds()
    assert events(registry, uid)[:2] == [
        ("online", "presence from %s" % PC01.jid.full()),
        ("offline", "presence unavailable")]


def test_repeated_presence_of_the_same_session_writes_nothing(registry):
    uid = register(registry, PC01)
    assert registry.available(PC01.jid) is None
    assert registry.unavailable(JID("stranger.abc@medulla.example/x")) is None
    assert registry.available(JID("stranger.abc@medulla.example/x")) is None
    assert len(events(registry, uid)) == 2


def test_an_old_session_leaving_after_a_new_one_started_keeps_the_machine_online(registry,
                                                                                 clock):
    uid = register(registry, PC01)
    new_session = JID(PC01.jid.userhost() + "/0a1b2c3d4eff")
    result_of(registry.available(new_session))
    assert registry.unavailable(PC01.jid) is None          # the old session's goodbye
    m = machine(registry, uid)
    assert m["online"] is True and m["jid"] == new_session.full()
    clock.advance(RECONNECT_RACE_SECONDS)
    result_of(registry.unavailable(new_session))
    assert machine(registry, uid)["online"] is False


def test_a_silent_machine_is_pinged_once_and_goes_offline_without_an_answer(registry, clock):
    uid = register(registry, PC01)
    clock.advance(19)
    assert registry.due_for_ping(20, 100) == []
    clock.advance(1)
    assert registry.due_for_ping(20, 100) == [(uid, PC01.jid.full())]
    assert registry.due_for_ping(20, 100) == []                 # already being pinged
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    assert machine(registry, uid)["online"] is False
    assert events(registry, uid)[0] == ("offline", "no answer to ping")


def test_a_machine_offline_for_a_ping_is_pinged_again_less_and_less_then_forgotten(registry,
                                                                                  clock):
    # No presence said its session was over: it may only have been slow. It is asked
    # again after 20 s, 40 s, 80 s... and, never answering, forgotten after a few tries.
    uid = register(registry, PC01)
    clock.advance(20)
    registry.due_for_ping(20, 100)
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    waits = []
    for _ in range(SUSPECT_PINGS):
        waited = 0
        while registry.due_for_ping(20, 100) == []:
            clock.advance(1)
            waited += 1
            assert waited < 10_000, "never pinged again"
        waits.append(waited)
        registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds())
    assert waits == [20 * 2 ** k for k in range(SUSPECT_PINGS)]
    clock.advance(100_000)
    assert registry.due_for_ping(20, 100) == []
    assert machine(registry, uid)["online"] is False


def test_a_suspect_that_answers_is_online_again(registry, clock):
    uid = register(registry, PC01)
    clock.advance(20)
    registry.due_for_ping(20, 100)
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    clock.advance(20)
    assert registry.due_for_ping(20, 100) == [(uid, PC01.jid.full())]
    result_of(registry.ping_answered(uid, PC01.jid.full(), True, clock.seconds()))
    assert machine(registry, uid)["online"] is True
    assert events(registry, uid)[0] == ("online", "answered a ping from %s" % PC01.jid.full())
    clock.advance(19)
    assert registry.due_for_ping(20, 100) == []                 # an ordinary online machine


def test_a_suspect_whose_session_ends_is_not_pinged_any_more(registry, clock):
    uid = register(registry, PC01)
    clock.advance(20)
    registry.due_for_ping(20, 100)
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    assert registry.unavailable(PC01.jid) is None               # already offline: no write
    clock.advance(1000)
    assert registry.due_for_ping(20, 100) == []


def test_an_answered_ping_keeps_the_machine_online_and_resets_its_silence(registry, clock):
    uid = register(registry, PC01)
    clock.advance(30)
    registry.due_for_ping(20, 100)
    assert registry.ping_answered(uid, PC01.jid.full(), True, clock.seconds()) is None
    assert machine(registry, uid)["online"] is True
    assert registry.due_for_ping(20, 100) == []
    clock.advance(20)
    assert registry.due_for_ping(20, 100) == [(uid, PC01.jid.full())]


def test_a_late_ping_answer_is_not_a_death_when_the_agent_spoke_meanwhile(registry, clock):
    # Under load the answer may come after the timeout; a message from the agent since
    # the ping went out proves it alive all the same.
    uid = register(registry, PC01)
    clock.advance(30)
    sent_at = clock.seconds()
    registry.due_for_ping(20, 100)
    clock.advance(5)
    registry.heard(PC01.jid)
    clock.advance(5)
    assert registry.ping_answered(uid, PC01.jid.full(), False, sent_at) is None
    assert machine(registry, uid)["online"] is True


def test_an_agent_marked_offline_is_online_again_when_it_speaks(registry, clock):
    # Under load a ping answer can come after the timeout: the master marks the agent
    # offline, but its session lives on and no presence will ever come. Its next
    # verified envelope must bring it back, or it stays offline until it reconnects.
    uid = register(registry, PC01)
    clock.advance(30)
    registry.due_for_ping(20, 100)
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    assert machine(registry, uid)["online"] is False
    clock.advance(5)
    result_of(registry.heard(PC01.jid))
    m = machine(registry, uid)
    assert m["online"] is True and m["jid"] == PC01.jid.full()
    assert events(registry, uid)[0] == ("online", "heard from %s" % PC01.jid.full())
    assert registry.heard(PC01.jid) is None                     # already online: no write
    assert registry.heard(JID("stranger@medulla.example/x")) is None


def test_a_late_pong_brings_an_agent_marked_offline_back(registry, clock):
    uid = register(registry, PC01)
    clock.advance(30)
    registry.due_for_ping(20, 100)
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    registry.due_for_ping(0, 100)
    result_of(registry.ping_answered(uid, PC01.jid.full(), True, clock.seconds()))
    assert machine(registry, uid)["online"] is True


def test_a_pong_from_an_old_session_does_not_replace_the_live_one(registry, clock):
    uid = register(registry, PC01)
    new_session = JID(PC01.jid.userhost() + "/0a1b2c3d4eff")
    result_of(registry.available(new_session))
    assert registry.ping_answered(uid, PC01.jid.full(), True, clock.seconds()) is None
    assert machine(registry, uid)["jid"] == new_session.full()


def test_an_unavailable_right_after_a_reconnection_is_checked_with_a_ping(registry, clock):
    # The agent reconnected with the same resource before the server closed its old,
    # silent connection: the old session's "unavailable" arrives after the new one's
    # presence. The machine stays online; a ping at the next sweep asks the session.
    uid = register(registry, PC01)
    clock.advance(5)
    assert registry.unavailable(PC01.jid) is None
    assert machine(registry, uid)["online"] is True
    assert registry.due_for_ping(20, 100) == [(uid, PC01.jid.full())]
    assert registry.ping_answered(uid, PC01.jid.full(), True, clock.seconds()) is None
    assert machine(registry, uid)["online"] is True
    assert [e for e, _ in events(registry, uid)] == ["online", "registered"]


def test_an_unavailable_right_after_a_reconnection_without_an_answer_is_offline(registry,
                                                                               clock):
    # No session any more: the server answers the ping with an error at once.
    uid = register(registry, PC01)
    assert registry.unavailable(PC01.jid) is None
    assert registry.due_for_ping(20, 100) == [(uid, PC01.jid.full())]
    result_of(registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()))
    assert machine(registry, uid)["online"] is False
    assert events(registry, uid)[0] == ("offline", "no answer to ping")


def test_an_unavailable_long_after_the_session_came_up_is_final_at_once(registry, clock):
    uid = register(registry, PC01)
    clock.advance(RECONNECT_RACE_SECONDS)
    result_of(registry.unavailable(PC01.jid))
    assert machine(registry, uid)["online"] is False
    clock.advance(100_000)
    assert registry.due_for_ping(20, 100) == []


def test_a_fleet_silent_at_once_is_pinged_at_a_bounded_rate(registry, clock):
    machines = [register(registry, Agent("pc%02d" % i, ["0a:1b:2c:3d:4e:%02x" % i], "k%d" % i))
                for i in range(10)]
    clock.advance(30)
    first = registry.due_for_ping(20, 4)
    second = registry.due_for_ping(20, 4)
    third = registry.due_for_ping(20, 4)
    assert (len(first), len(second), len(third)) == (4, 4, 2)
    assert {u for u, _ in first + second + third} == set(machines)


def test_hearing_from_a_machine_delays_its_ping(registry, clock):
    uid = register(registry, PC01)
    clock.advance(15)
    registry.heard(PC01.jid)
    clock.advance(15)
    assert registry.due_for_ping(20, 100) == []
    assert machine(registry, uid)["last_seen"] == clock.seconds() - 15


def test_a_ping_answer_from_a_replaced_session_changes_nothing(registry, clock):
    uid = register(registry, PC01)
    clock.advance(30)
    registry.due_for_ping(20, 100)
    result_of(registry.available(JID(PC01.jid.userhost() + "/0a1b2c3d4eff")))
    assert registry.ping_answered(uid, PC01.jid.full(), False, clock.seconds()) is None
    assert machine(registry, uid)["online"] is True


def test_after_our_reconnect_machines_that_sent_no_presence_go_offline(registry):
    uid1, uid2 = register(registry, PC01), register(registry, PC02)
    registry.session_started()
    result_of(registry.available(PC01.jid))
    result_of(registry.reconcile())
    assert machine(registry, uid1)["online"] is True
    assert machine(registry, uid2)["online"] is False
    assert events(registry, uid2)[0] == ("offline", "no presence since the master reconnected")
    assert registry.due_for_ping(0, 100) == [(uid1, PC01.jid.full())]


def test_a_restart_keeps_machines_history_and_pinned_keys(path, clock):
    registry = open_registry(path, clock)
    uid1 = register(registry, PC01)
    register(registry, PC02)
    clock.advance(RECONNECT_RACE_SECONDS)
    result_of(registry.unavailable(PC02.jid))
    history = events(registry, uid1)
    registry.store.close()

    clock.advance(60)
    registry = open_registry(path, clock)
    assert registry.uuid_for(PC01.jid) == uid1
    assert registry.public_key_for(PC01.jid.userhost()) == "ed25519:key1"
    assert events(registry, uid1) == history
    assert result_of(registry.status())["machines"] == {"total": 2, "online": 1, "offline": 1}
    # The pinned key still decides: the same MAC with another key is refused...
    impostor = Agent("evil", PC01.macs, "other-key")
    assert isinstance(failure_of(registry.register(
        impostor.jid, impostor.facts, impostor.fingerprint, "master")), Refused)
    # ...and PC01, silent since the restart, is marked offline by the reconcile.
    result_of(registry.reconcile())
    assert machine(registry, uid1)["online"] is False
    assert register(registry, PC01) == uid1
    registry.store.close()


def test_machines_are_found_by_hostname_uuid_or_jid(registry):
    uid = register(registry, Agent("PC-Sales", ["0a:00:00:00:00:01"], "k"))
    register(registry, PC02)
    jid = machine(registry, uid)["jid"]
    for name in ("pc-sales", "PC-SALES", uid, jid, jid.split("/")[0]):
        assert [m["uuid"] for m in result_of(registry.find_machines(name))] == [uid], name
    assert result_of(registry.find_machines("pc-sal")) == []
    assert result_of(registry.find_machines("m-")) == []


def test_lists_and_counts_follow_presence(registry, clock):
    uid1, uid2 = register(registry, PC01), register(registry, PC02)
    clock.advance(RECONNECT_RACE_SECONDS)
    result_of(registry.unavailable(PC02.jid))
    assert [m["uuid"] for m in result_of(registry.list_machines())] == [uid1, uid2]
    assert [m["uuid"] for m in result_of(registry.list_machines(online=True))] == [uid1]
    assert [m["uuid"] for m in result_of(registry.list_machines(online=False))] == [uid2]
    status = result_of(registry.status())
    assert status["machines"] == {"total": 2, "online": 1, "offline": 1}
    assert status["xmpp"] == {"connected": False, "jid": ""}


def test_history_is_newest_first_and_limited(registry, clock):
    uid = register(registry, PC01)
    for _ in range(30):
        clock.advance(RECONNECT_RACE_SECONDS)
        registry.unavailable(PC01.jid)
        clock.advance(1)
        registry.available(PC01.jid)
    history = result_of(registry.machine_history(uid, limit=5))
    assert len(history) == 5
    assert [h["ts"] for h in history] == sorted((h["ts"] for h in history), reverse=True)
    assert len(result_of(registry.machine_history(uid))) == 50
