"""Relays enrolled with the master (master/relays.py) over a real SQLite store and a
task.Clock: the registration HMAC, key pinning, key mismatch, reset-key and re-pinning,
relay.status, who may speak for which relay, and what the API lists."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core import envelope as env
from medulla_appliance.core import keys
from medulla_appliance.core.store import Store
from medulla_appliance.core.xmpp.channel import Refusal
from medulla_appliance.core.xmpp.relay_enrolment import registration
from medulla_appliance.master import deploy_storage, storage
from medulla_appliance.master.relays import MASTER_HOST, Relays, url_feeder
from tests.unit.deferreds import result_of

NOW = 1_763_820_000.0
DOMAIN = "medulla.example"
ENROLMENT_KEY = "k" * 32
MASTER = JID("master@%s/master" % DOMAIN)
MASTER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LYON_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
LYON = JID("relay-lyon@%s/syncthing" % DOMAIN)


def refusal_of(d):
    out = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure) and out[0].check(Refusal), out
    return out[0].value


def envelope(action, data):
    return env.Envelope.new(action, data, now=NOW)


def register_envelope(name="lyon", key=LYON_KEY, daemon="medulla-syncthing",
                      enrolment_key=ENROLMENT_KEY):
    return envelope("relay.register",
                    registration(name, daemon, "0.1.0", key, enrolment_key))


class Master:
    def __init__(self, path):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = Store("sqlite:" + str(path), storage.MIGRATIONS, threaded=False)
        self.urls = {"paris": "http://configured:9990"}
        self.relays = self.new_relays()

    def new_relays(self):
        relays = Relays(self.store, self.clock, ENROLMENT_KEY, MASTER, MASTER_KEY.public_key(),
                        on_package_url=url_feeder(self.urls, {"paris"}))
        result_of(relays.load())
        return relays

    def register(self, sender=LYON, **kw):
        return self.relays.register(sender, register_envelope(**kw))


@pytest.fixture
def master(tmp_path):
    m = Master(tmp_path / "master.sqlite")
    yield m
    m.store.close()


def test_a_good_registration_pins_the_key_and_a_second_daemon_joins(master):
    answer = result_of(master.register())
    assert answer == {"relay": "lyon", "pinned": True,
                      "key_fingerprint": keys.fingerprint(LYON_KEY.public_key())}
    assert master.relays.public_key_for("lyon") == keys.public_key_text(LYON_KEY)
    again = result_of(master.register(JID("relay-lyon@%s/relay" % DOMAIN),
                                      daemon="medulla-relay"))
    assert again["pinned"] is False
    relay = result_of(master.relays.get_relay("lyon"))
    assert set(relay["daemons"]) == {"medulla-syncthing", "medulla-relay"}
    assert relay["daemons"]["medulla-relay"]["resource"] == "relay"
    assert relay["enrolled"] and relay["online"] and relay["jid"] == "relay-lyon@" + DOMAIN
    assert "public_key" not in relay  # the API shows the fingerprint only


def test_the_pinned_key_survives_a_restart_of_the_master(master):
    result_of(master.register())
    restarted = master.new_relays()
    assert restarted.public_key_for("lyon") == keys.public_key_text(LYON_KEY)
    assert restarted.appliance_key(LYON) is not None


@pytest.mark.parametrize("tamper", ["wrong key", "missing mac", "changed field"])
def test_a_registration_not_made_with_the_enrolment_key_is_refused(master, tamper):
    if tamper == "wrong key":
        e = register_envelope(enrolment_key="x" * 32)
    else:
        data = registration("lyon", "medulla-syncthing", "0.1.0", LYON_KEY, ENROLMENT_KEY)
        if tamper == "missing mac":
            del data["psk_mac"]
        else:
            data["version"] = "9.9.9"  # MACed with 0.1.0
        e = envelope("relay.register", data)
    refusal = refusal_of(master.relays.register(LYON, e))
    assert (refusal.code, refusal.error) == (401, "bad-enrolment-key")
    assert master.relays.public_key_for("lyon") is None
    assert result_of(master.relays.list_relays()) == []


def test_another_key_for_an_enrolled_relay_is_refused_until_reset(master):
    result_of(master.register())
    refusal = refusal_of(master.register(key=OTHER_KEY))
    assert (refusal.code, refusal.error) == (409, "key-mismatch")
    assert keys.fingerprint(LYON_KEY.public_key()) in refusal.message
    assert "reset-key lyon" in refusal.message
    assert master.relays.public_key_for("lyon") == keys.public_key_text(LYON_KEY)

    assert result_of(master.relays.reset_key("lyon")) is True
    assert master.relays.appliance_key(LYON) is None  # nothing trusted until it enrols
    assert result_of(master.relays.get_relay("lyon"))["enrolled"] is False
    assert result_of(master.register(key=OTHER_KEY))["pinned"] is True
    assert master.relays.public_key_for("lyon") == keys.public_key_text(OTHER_KEY)
    refusal = refusal_of(master.register(key=LYON_KEY))  # the old key is the stranger now
    assert refusal.error == "key-mismatch"


def test_reset_key_of_an_unknown_relay_says_so(master):
    assert result_of(master.relays.reset_key("nowhere")) is False


@pytest.mark.parametrize("sender, name, code, error", [
    ("pc-042@medulla.example/agent", "lyon", 403, "not-a-relay-account"),
    ("relay-lyon@evil.example/syncthing", "lyon", 403, "not-a-relay-account"),
    ("relay-master@medulla.example/syncthing", "master", 403, "not-a-relay-account"),
    ("relay-@medulla.example/syncthing", "", 403, "not-a-relay-account"),
    ("master@medulla.example/syncthing", "master", 403, "not-a-relay-account"),
    ("relay-lyon@medulla.example/syncthing", "paris", 403, "wrong-relay"),
])
def test_a_relay_enrols_only_as_its_own_account(master, sender, name, code, error):
    refusal = refusal_of(master.relays.register(JID(sender), register_envelope(name=name)))
    assert (refusal.code, refusal.error) == (code, error)
    assert result_of(master.relays.list_relays()) == []


@pytest.mark.parametrize("change", [
    {"daemon": ""}, {"daemon": 42}, {"version": None}, {"daemon": "a\x1b[2Jb"},
    {"version": "v" * 65}, {"extra": "field"}, {"name": ["lyon"]},
])
def test_malformed_registration_data_is_refused_with_a_clear_code(master, change):
    data = {"name": "lyon", "daemon": "medulla-relay", "version": "0.1.0",
            "public_key": keys.public_key_text(LYON_KEY), **change}
    data["psk_mac"] = keys.registration_mac(ENROLMENT_KEY, data)  # a key holder's mistake
    refusal = refusal_of(master.relays.register(LYON, envelope("relay.register", data)))
    assert refusal.code in (400, 403) and refusal.error in ("bad-field", "wrong-relay")
    assert refusal.message
    assert master.relays.public_key_for("lyon") is None


@pytest.mark.parametrize("public_key", [None, 7, "ed25519:AAAA", "rsa:xyz"])
def test_a_registration_whose_key_cannot_be_read_is_not_verified_at_all(master, public_key):
    signed = env.decode(env.encode(envelope("relay.register", {"public_key": public_key}),
                                   LYON_KEY, LYON.full(), MASTER.full()))
    with pytest.raises(Refusal) as err:
        master.relays.register_key(LYON, signed)
    assert (err.value.code, err.value.error) == (400, "bad-field")


def test_who_speaks_for_appliance_actions(master):
    relays = master.relays
    assert relays.origin(JID("master@%s/syncthing" % DOMAIN)).master_host
    assert relays.appliance_key(JID("master@%s/pxe" % DOMAIN)) == MASTER_KEY.public_key()
    assert relays.origin(MASTER) is None  # the master itself is not one of its daemons
    assert relays.appliance_key(LYON) is None  # an account that never enrolled
    result_of(master.register())
    assert relays.origin(LYON).relay == "lyon" and not relays.origin(LYON).master_host
    assert keys.public_key_text(relays.appliance_key(JID("relay-lyon@%s/any" % DOMAIN))) \
        == keys.public_key_text(LYON_KEY)
    assert relays.appliance_key(JID("relay-paris@%s/syncthing" % DOMAIN)) is None
    assert relays.appliance_key(JID("relay-lyon@evil.example/syncthing")) is None
    assert relays.appliance_key(JID("pc-042@%s/agent" % DOMAIN)) is None


def test_a_relay_speaks_only_for_itself_the_master_host_for_all(master):
    result_of(master.register())
    calls = []
    handler = master.relays.own_relay_only(lambda s, e: calls.append(e.data["relay"]) or {})
    with pytest.raises(Refusal) as err:
        handler(LYON, envelope("package.synced", {"relay": "paris"}))
    assert (err.value.code, err.value.error) == (403, "not-your-relay")
    with pytest.raises(Refusal):
        handler(LYON, envelope("package.synced", {"relay": ["lyon"]}))
    handler(LYON, envelope("package.synced", {"relay": "lyon"}))
    handler(JID("master@%s/syncthing" % DOMAIN), envelope("package.synced", {"relay": "paris"}))
    assert calls == ["lyon", "paris"]


def test_status_of_an_enrolled_relay_is_kept_and_its_url_used_unless_configured(master):
    refusal = refusal_of(master.relays.status(LYON, envelope("relay.status", {})))
    assert (refusal.code, refusal.error) == (403, "unknown-relay")
    result_of(master.register())
    data = {"load": {"active_downloads": 3, "clients": 2}, "packages_complete": 5,
            "interval": 30, "package_url": "http://lyon.example:9990"}
    assert result_of(master.relays.status(LYON, envelope("relay.status", data))) == {
        "relay": "lyon"}
    relay = result_of(master.relays.get_relay("lyon"))
    assert relay["status"] == {"load": {"active_downloads": 3, "clients": 2},
                               "packages_complete": 5}
    assert relay["package_url"] == "http://lyon.example:9990" and relay["status_interval"] == 30
    assert master.urls == {"paris": "http://configured:9990", "lyon": "http://lyon.example:9990"}
    master.clock.advance(89)
    assert result_of(master.relays.list_relays())[0]["online"] is True
    master.clock.advance(2)  # three intervals without a word
    assert result_of(master.relays.list_relays())[0]["online"] is False
    master.relays.heard(LYON)  # any verified envelope from it
    assert result_of(master.relays.list_relays())[0]["online"] is True


def test_a_configured_relay_url_wins_over_the_relays_own(master):
    paris = JID("relay-paris@%s/relay" % DOMAIN)
    result_of(master.register(paris, name="paris"))
    result_of(master.relays.status(paris, envelope("relay.status", {
        "package_url": "http://elsewhere:9990"})))
    assert master.urls["paris"] == "http://configured:9990"


def test_the_master_hosts_own_relay_reports_under_its_name(master):
    own = JID("master@%s/relay" % DOMAIN)
    result_of(master.relays.status(own, envelope("relay.status", {"packages_complete": 2})))
    relay = result_of(master.relays.get_relay(MASTER_HOST))
    assert relay["enrolled"] and relay["jid"] == "master@" + DOMAIN
    assert relay["status"]["packages_complete"] == 2


@pytest.mark.parametrize("data", [
    {"load": []}, {"load": {"x": "many"}}, {"load": {"x": True}},
    {"load": {str(i): i for i in range(33)}}, {"packages_complete": -1},
    {"packages_complete": "3"}, {"interval": 0}, {"interval": 10 ** 9},
    {"package_url": "ftp://x"}, {"package_url": "http://" + "x" * 2000},
])
def test_malformed_status_is_refused(master, data):
    result_of(master.register())
    refusal = refusal_of(master.relays.status(LYON, envelope("relay.status", data)))
    assert (refusal.code, refusal.error) == (400, "bad-field")
    assert result_of(master.relays.get_relay("lyon"))["status"] == {}


def test_a_relay_shows_the_packages_its_syncthing_reported(master):
    result_of(master.register())
    result_of(master.store.run(deploy_storage.packages_synced, "lyon",
                              [("hello", "a" * 64)], [], True, NOW))
    relay = result_of(master.relays.get_relay("lyon"))
    assert relay["packages"] == [{"package_id": "hello", "descriptor_sha256": "a" * 64,
                                  "ts": NOW}]
    assert result_of(master.relays.get_relay("paris")) is None
