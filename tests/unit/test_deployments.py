"""The master's deployment coordinator: orders go to the right machines, results are
accepted only from the machine a session belongs to, state lives in the store."""

import hashlib
import json
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.core.store import Store
from medulla_appliance.core.xmpp.channel import Refusal
from medulla_appliance.master import storage
from medulla_appliance.master.deployments import DeploymentError, Deployments
from medulla_appliance.packages.store import PackageStore

MACHINES = {"m-a": ("pc-a", "pc-a.abc@d.test"), "m-b": ("pc-b", "pc-b.abc@d.test")}


class FakeRegistry:
    def __init__(self, online):
        self.online = set(online)

    def online_uuids(self):
        return set(self.online)

    def full_jid(self, uid):
        return JID(MACHINES[uid][1] + "/res") if uid in self.online else None

    def bare_jid(self, uid):
        return MACHINES[uid][1]

    def uuid_for(self, jid):
        return next((u for u, (_, j) in MACHINES.items() if j == jid.userhost()), None)

    def find_machines(self, name):
        return defer.succeed([{"uuid": u} for u, (h, _) in MACHINES.items() if h == name])


class FakeChannel:
    def __init__(self):
        self.sent = []

    def send_new(self, jid, action, data, sessionid=None):
        self.sent.append((jid.full(), action, data, sessionid))


@pytest.fixture
def coordinator(tmp_path):
    store = Store("sqlite:" + str(tmp_path / "m.sqlite"), storage.MIGRATIONS, threaded=False)
    for uid, (host, jid) in MACHINES.items():
        store.run(lambda c, u=uid, h=host, j=jid: c.execute(
            "INSERT INTO machines (uuid, hostname, jid, relay, enrolled_at, updated_at) "
            "VALUES (?, ?, ?, 'master', 0, 0)", (u, h, j)))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"x")
    (src / "descriptor.json").write_text(json.dumps({
        "schema": 1, "id": "pkg", "name": "pkg", "version": "1", "os": ["linux"],
        "files": [{"path": "f.txt", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}],
        "sequences": {"linux": {"install": [{"type": "script", "body": "true"}]}}}))
    packages = PackageStore(str(tmp_path / "packages"))
    packages.add_from_folder(str(src))
    clock, channel = task.Clock(), FakeChannel()
    clock.advance(1000)
    deps = Deployments(store, clock, FakeRegistry({"m-a", "m-b"}), channel,
                       lambda claims: "token-for-" + claims["sub"], packages,
                       {"master": "http://relay:9990"}, rand=lambda n: b"\x01" * n,
                       in_thread=defer.maybeDeferred)
    return SimpleNamespace(deps=deps, clock=clock, channel=channel, store=store)


def run(d):
    d = defer.ensureDeferred(d)
    results = []
    d.addBoth(results.append)
    assert results, "should have fired synchronously"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def started(c):
    run(c.deps.create("pkg", ["pc-a", "pc-b"]))
    c.clock.advance(0)
    run(c.deps.run_pass())
    return {data["deployment"] and jid.split(".")[0]: (session, data)
            for jid, action, data, session in c.channel.sent if action == "deploy.start"}


def test_orders_carry_the_signed_descriptor_hash_and_a_token_per_machine(coordinator):
    orders = started(coordinator)
    assert set(orders) == {"pc-a", "pc-b"}
    session, data = orders["pc-a"]
    assert data["url"] == "http://relay:9990/packages/pkg/"
    assert data["token"] == "token-for-pc-a.abc@d.test"
    assert len(data["descriptor_sha256"]) == 64 and session.endswith(":m-a:1")


def test_a_result_from_another_machine_is_refused(coordinator):
    orders = started(coordinator)
    session_of_a = orders["pc-a"][0]
    forged = SimpleNamespace(sessionid=session_of_a, data={"state": "success"})
    with pytest.raises(Refusal) as err:
        run(coordinator.deps.on_result(JID("pc-b.abc@d.test/res"), forged))
    assert err.value.code == 403
    dep = run(coordinator.deps.details(session_of_a.split(":")[0]))
    states = {t["hostname"]: t["state"] for t in dep["targets"]}
    assert states["pc-a"] == "DEPLOYMENT START"  # unchanged by the forgery
    # the real machine's result counts, and is acknowledged
    assert run(coordinator.deps.on_result(JID("pc-a.abc@d.test/res"), forged)) == {
        "recorded": True}
    dep = run(coordinator.deps.details(session_of_a.split(":")[0]))
    assert {t["hostname"]: t["state"] for t in dep["targets"]}["pc-a"] == "DEPLOYMENT SUCCESS"


def test_an_unknown_session_is_refused(coordinator):
    bogus = SimpleNamespace(sessionid="dep-x:m-a:1", data={"state": "success"})
    with pytest.raises(Refusal):
        run(coordinator.deps.on_result(JID("pc-a.abc@d.test/res"), bogus))


def test_a_deployment_needs_known_targets_and_a_package(coordinator):
    with pytest.raises(DeploymentError):
        run(coordinator.deps.create("pkg", ["nobody"]))
    with pytest.raises(DeploymentError):
        run(coordinator.deps.create("nope", ["pc-a"]))


def test_a_remote_relay_target_waits_for_the_package_to_be_synced_there(coordinator):
    c = coordinator
    c.store.run(lambda conn: conn.execute("UPDATE machines SET relay = 'lyon' WHERE uuid = 'm-b'"))
    dep = run(c.deps.create("pkg", ["pc-b"]))
    run(c.deps.run_pass())
    assert [t["state"] for t in run(c.deps.details(dep["id"]))["targets"]] == [
        "WAITING PACKAGE SYNC"]
    synced = SimpleNamespace(data={"relay": "lyon", "snapshot": True, "complete": [
        {"package_id": "pkg", "descriptor_sha256": "0" * 64}]})  # an older version
    run(c.deps.on_package_synced(None, synced))
    run(c.deps.run_pass())
    assert run(c.deps.details(dep["id"]))["targets"][0]["state"] == "WAITING PACKAGE SYNC"
    synced.data["complete"][0]["descriptor_sha256"] = dep["descriptor_sha256"]
    run(c.deps.on_package_synced(None, synced))
    run(c.deps.run_pass())
    assert run(c.deps.details(dep["id"]))["targets"][0]["state"] == "DEPLOYMENT START"
    assert [a for _, a, _, _ in c.channel.sent] == ["deploy.start"]


def test_package_synced_with_bad_data_is_refused(coordinator):
    with pytest.raises(Refusal):
        run(coordinator.deps.on_package_synced(None, SimpleNamespace(data={"relay": 3})))
    with pytest.raises(Refusal):
        run(coordinator.deps.on_package_synced(None, SimpleNamespace(
            data={"relay": "x", "complete": [{"package_id": 1}]})))


def test_appliance_actions_verify_with_appliance_keys_and_the_rest_with_enrolment():
    # Which appliance account holds which key is Relays' business (test_relays.py); here:
    # package.synced never falls back to an agent's pinned key, and agents' actions never
    # to an appliance key.
    from medulla_appliance.master.service import MasterService
    fake = SimpleNamespace(appliance_actions={"package.synced"},
                           _appliance_key=lambda sender: "appliance:" + sender.full(),
                           relays=SimpleNamespace(register_key=lambda s, e: "carried"),
                           enrolment=SimpleNamespace(trust=lambda s, e: "enrolment"))
    trust = MasterService._trust

    def signed(action):
        return SimpleNamespace(envelope=SimpleNamespace(action=action))

    syncthing = JID("master@d.test/syncthing")
    assert trust(fake, syncthing, signed("package.synced")) == "appliance:" + syncthing.full()
    assert trust(fake, JID("relay-a@d.test/relay"), signed("relay.register")) == "carried"
    assert trust(fake, JID("pc-a.abc@d.test/res"), signed("deploy.result")) == "enrolment"
