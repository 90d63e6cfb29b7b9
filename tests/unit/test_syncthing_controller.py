"""The controller over an in-memory Syncthing (FakeSyncthingClient) and a task.Clock:
configuration, events, markers, what the listener is told, and reconnection."""

import hashlib
import json
import shutil

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from medulla_appliance.syncthing import configure
from medulla_appliance.syncthing.config import FOLDER_ID, Peer, Settings
from medulla_appliance.syncthing.controller import SyncthingController
from medulla_appliance.testing.fake_syncthing import FakeSyncthingClient

MASTER_ID = "FDXK2TM-IW4H3YI-EGGBUJ6-JSGK7KB-S2TIIFY-2RWPUQR-PKCDY4S-2RHUUQR"
RELAY_ID = "YPDKACQ-DJ5TONZ-4ZOLBDY-ZNMJYSK-O6IL4ER-D32AQID-HAJARTL-3LRCTA7"
LYON_ID = "PPFVJJA-X4G6XVP-RC2DW7X-VNPFEXF-ZNXQKWI-PGCCHUK-CRS5BXW-CUGBLAN"


class Recorder:
    """A PackageListener that remembers what it was told."""

    def __init__(self):
        self.told = []

    def on_package_complete(self, relay_name, package_id, descriptor_sha256):
        self.told.append(("complete", relay_name, package_id, descriptor_sha256))

    def on_package_gone(self, relay_name, package_id, descriptor_sha256):
        self.told.append(("gone", relay_name, package_id, descriptor_sha256))

    def take(self):
        told, self.told = self.told, []
        return told


def in_thread_now(fn, *args):
    return defer.maybeDeferred(fn, *args)


class GatedThread:
    """run_in_thread whose work finishes only when the test says so."""

    def __init__(self):
        self.waiting = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.waiting.append((d, fn, args))
        return d

    def release(self):
        waiting, self.waiting = self.waiting, []
        for d, fn, args in waiting:
            try:
                result = fn(*args)
            except Exception:
                d.errback()
            else:
                d.callback(result)


def write_package(root, package_id, files):
    folder = root / package_id
    folder.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        (folder / path).write_bytes(content)
    raw = json.dumps({"schema": 1, "id": package_id, "files": [
        {"path": p, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
        for p, c in files.items()]}).encode()
    (folder / "descriptor.json").write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def marker(root, package_id):
    path = root / ".complete" / package_id
    return json.loads(path.read_text())["descriptor_sha256"] if path.exists() else None


class Node:
    """A controller with its fake Syncthing, clock, listener and packages folder."""

    def __init__(self, root, role="relay", thread=in_thread_now, peers=None):
        self.root = root
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.syncthing = FakeSyncthingClient(self.clock, RELAY_ID if role == "relay"
                                             else MASTER_ID)
        self.listener = Recorder()
        if peers is None:
            peers = ((Peer("master", MASTER_ID, ("tcp://10.0.0.1:22000",)),) if role == "relay"
                     else (Peer("lyon", LYON_ID, ("tcp://10.0.0.2:22000",)),))
        self.settings = Settings(role=role, name="lyon" if role == "relay" else "master",
                                 packages_root=str(root), peers=peers,
                                 listen=("tcp://0.0.0.0:22000",), settle_delay=0.5,
                                 resync_interval=300)
        self.controller = SyncthingController(self.syncthing, self.settings, self.listener,
                                              clock=self.clock, run_in_thread=thread,
                                              rand=lambda: 0.5)

    def start(self):
        self.controller.startService()
        self.run(0)
        return self

    def run(self, seconds=1.0):
        """Let ``seconds`` pass, in small steps (timers fire in order)."""
        self.clock.advance(0)
        steps = int(seconds / 0.1)
        for _ in range(steps):
            self.clock.advance(0.1)

    def emit(self, kind, **data):
        data.setdefault("folder", FOLDER_ID)
        self.syncthing.emit(kind, **data)

    def need(self, *names):
        self.syncthing.need_[FOLDER_ID] = [{"name": name} for name in names]

    def stop(self):
        d = self.controller.stopService()
        self.run(0)
        return d


@pytest.fixture
def relay(tmp_path):
    node = Node(tmp_path / "packages").start()
    yield node
    node.stop()


def test_ready_once_syncthing_answers_and_the_config_is_applied(tmp_path):
    node = Node(tmp_path / "packages")
    node.syncthing.available = False
    node.controller.startService()
    ready = node.controller.when_ready()
    node.run(10)
    assert not ready.called and node.syncthing.calls.count("status") >= 2
    node.syncthing.available = True
    node.run(31)
    assert ready.called
    folder = node.syncthing.folders_[FOLDER_ID]
    assert folder["type"] == "receiveonly" and folder["path"] == str(tmp_path / "packages")
    assert {d["deviceID"] for d in folder["devices"]} == {RELAY_ID, MASTER_ID}
    assert node.syncthing.options_["globalAnnounceEnabled"] is False
    assert node.syncthing.options_["relaysEnabled"] is False
    node.stop()


def test_a_package_is_offered_only_once_syncthing_needs_nothing_of_it(relay):
    sha = write_package(relay.root, "firefox", {"setup.exe": b"x" * 5000})
    relay.need("firefox/setup.exe")
    relay.emit("RemoteIndexUpdated", device=MASTER_ID, items=2)
    relay.run(1)
    assert marker(relay.root, "firefox") is None and relay.listener.take() == []
    relay.need()
    relay.emit("ItemFinished", item="firefox/setup.exe", action="update", type="file")
    relay.emit("LocalIndexUpdated", filenames=["firefox/setup.exe"])
    relay.run(1)
    assert marker(relay.root, "firefox") == sha
    assert relay.listener.take() == [("complete", "lyon", "firefox", sha)]


def test_checksums_that_do_not_match_keep_it_unoffered(relay):
    write_package(relay.root, "firefox", {"setup.exe": b"x" * 5000})
    (relay.root / "firefox" / "setup.exe").write_bytes(b"y" * 5000)  # same size, other bytes
    relay.emit("FolderSummary", summary={"needTotalItems": 0})
    relay.run(1)
    assert marker(relay.root, "firefox") is None and relay.listener.take() == []


def test_item_started_withdraws_the_marker_at_once(relay):
    sha = write_package(relay.root, "firefox", {"setup.exe": b"x" * 5000})
    relay.emit("FolderSummary", summary={})
    relay.run(1)
    assert marker(relay.root, "firefox") == sha
    relay.listener.take()
    relay.need("firefox/setup.exe")
    relay.emit("ItemStarted", item="firefox/setup.exe", action="update", type="file")
    # No time passed: the marker went with the event, before any look.
    assert marker(relay.root, "firefox") is None
    assert relay.listener.take() == [("gone", "lyon", "firefox", sha)]
    relay.run(2)
    assert marker(relay.root, "firefox") is None
    new_sha = write_package(relay.root, "firefox", {"setup.exe": b"z" * 6000})
    relay.need()
    relay.emit("ItemFinished", item="firefox/setup.exe", action="update", type="file")
    relay.run(1)
    assert marker(relay.root, "firefox") == new_sha
    assert relay.listener.take() == [("complete", "lyon", "firefox", new_sha)]


def test_a_remote_index_update_withdraws_before_the_puller_starts(relay):
    sha = write_package(relay.root, "firefox", {"setup.exe": b"x"})
    relay.emit("FolderSummary", summary={})
    relay.run(1)
    relay.listener.take()
    relay.need("firefox/setup.exe")
    relay.emit("RemoteIndexUpdated", device=MASTER_ID, items=1)
    relay.clock.advance(0)  # looked at once, no settle delay
    assert marker(relay.root, "firefox") is None
    assert relay.listener.take() == [("gone", "lyon", "firefox", sha)]


def test_a_changed_package_is_withdrawn_then_offered_with_its_new_descriptor(relay):
    old = write_package(relay.root, "firefox", {"setup.exe": b"x"})
    relay.emit("FolderSummary", summary={})
    relay.run(1)
    relay.listener.take()
    new = write_package(relay.root, "firefox", {"setup.exe": b"x", "extra.msi": b"e" * 10})
    relay.emit("LocalIndexUpdated", filenames=["firefox/descriptor.json", "firefox/extra.msi"])
    relay.run(1)
    assert marker(relay.root, "firefox") == new
    assert relay.listener.take() == [("gone", "lyon", "firefox", old),
                                     ("complete", "lyon", "firefox", new)]


def test_a_deleted_package_loses_its_marker(relay):
    sha = write_package(relay.root, "firefox", {"setup.exe": b"x"})
    relay.emit("FolderSummary", summary={})
    relay.run(1)
    relay.listener.take()
    shutil.rmtree(relay.root / "firefox")
    relay.emit("ItemFinished", item="firefox", action="delete", type="dir")
    relay.run(1)
    assert not (relay.root / ".complete" / "firefox").exists()
    assert relay.listener.take() == [("gone", "lyon", "firefox", sha)]


def test_a_package_touched_while_being_verified_waits_for_the_next_look(tmp_path):
    thread = GatedThread()
    node = Node(tmp_path / "packages", thread=thread).start()
    sha = write_package(node.root, "firefox", {"setup.exe": b"x"})
    node.run(1)
    assert len(thread.waiting) == 1  # the first look is hashing
    node.emit("ItemFinished", item="firefox/setup.exe", action="update", type="file")
    thread.release()
    node.run(0)
    assert marker(node.root, "firefox") is None  # what was hashed may be stale
    node.run(1)
    thread.release()
    node.run(0)
    assert marker(node.root, "firefox") == sha
    node.stop()


def test_files_changed_by_hand_on_a_relay_are_reverted(relay):
    relay.syncthing.summary_[FOLDER_ID] = {"receiveOnlyTotalItems": 2}
    relay.emit("FolderSummary", summary={})
    relay.run(1)
    assert relay.syncthing.reverted == [FOLDER_ID]


def test_the_master_tracks_what_is_complete_on_each_relay(tmp_path):
    node = Node(tmp_path / "packages", role="master").start()
    a = write_package(node.root, "pkga", {"a": b"1"})
    b = write_package(node.root, "pkgb", {"b": b"22"})
    c = write_package(node.root, "pkgc", {"c": b"333"})
    node.syncthing.index_folder(FOLDER_ID, node.root)
    del node.syncthing.index_[FOLDER_ID]["pkgc/c"]  # not scanned by Syncthing yet
    node.syncthing.hold(FOLDER_ID, LYON_ID, "pkga/")
    node.syncthing.hold(FOLDER_ID, LYON_ID, "pkgc/")
    node.syncthing.hold(FOLDER_ID, LYON_ID, "pkgb/descriptor.json")  # pkgb/b on its way
    node.syncthing.remote_need_[(FOLDER_ID, LYON_ID)] = [{"name": "pkgb/b"}]
    node.emit("LocalIndexUpdated", filenames=["pkga/a", "pkgb/b", "pkgc/c"])
    node.run(1)
    told = node.listener.take()
    assert [t for t in told if t[1] == "master"] == [
        ("complete", "master", "pkga", a), ("complete", "master", "pkgb", b),
        ("complete", "master", "pkgc", c)]
    assert [t for t in told if t[1] == "lyon"] == [("complete", "lyon", "pkga", a)]
    node.syncthing.hold(FOLDER_ID, LYON_ID, "pkgb/")
    node.syncthing.remote_need_[(FOLDER_ID, LYON_ID)] = []
    node.emit("FolderCompletion", device=LYON_ID, completion=100, needItems=0)
    node.run(1)
    assert node.listener.take() == [("complete", "lyon", "pkgb", b)]
    assert "on relays: lyon 2" in node.controller.status_line()
    node.stop()


def test_the_master_does_not_trust_a_need_list_that_lags_a_scan(tmp_path):
    """Syncthing 1.19 may answer 'nothing needed' a moment before it counts a new
    version: the relay must hold the global version of each file, as scanned from ours."""
    node = Node(tmp_path / "packages", role="master").start()
    old = write_package(node.root, "pkga", {"a": b"1"})
    node.syncthing.index_folder(FOLDER_ID, node.root, holders=[LYON_ID])
    node.emit("LocalIndexUpdated", filenames=["pkga/a"])
    node.run(1)
    assert ("complete", "lyon", "pkga", old) in node.listener.take()
    new = write_package(node.root, "pkga", {"a": b"2"})  # same sizes, not scanned yet
    node.emit("FolderSummary", summary={})
    node.run(1)
    assert node.listener.take() == [("gone", "master", "pkga", old),
                                    ("complete", "master", "pkga", new),
                                    ("gone", "lyon", "pkga", old)]
    node.syncthing.index_folder(FOLDER_ID, node.root)  # scanned; the relay lacks it
    node.emit("LocalIndexUpdated", filenames=["pkga/a", "pkga/descriptor.json"])
    node.run(1)
    assert node.listener.take() == []
    node.syncthing.hold(FOLDER_ID, LYON_ID)
    node.emit("FolderCompletion", device=LYON_ID, completion=100, needItems=0)
    node.run(1)
    assert node.listener.take() == [("complete", "lyon", "pkga", new)]
    node.stop()


def test_a_relay_dropped_from_the_config_is_forgotten(tmp_path):
    node = Node(tmp_path / "packages", role="master").start()
    a = write_package(node.root, "pkga", {"a": b"1"})
    node.syncthing.index_folder(FOLDER_ID, node.root, holders=[LYON_ID])
    node.emit("LocalIndexUpdated", filenames=["pkga/a"])
    node.run(1)
    assert ("complete", "lyon", "pkga", a) in node.listener.take()
    node.controller.update_settings(Settings(**{**node.settings.__dict__, "peers": ()}))
    node.run(1)
    assert node.listener.take() == [("gone", "lyon", "pkga", a)]
    node.stop()


def test_a_config_changed_behind_our_back_is_put_back(relay):
    writes_before = len(relay.syncthing.writes)
    relay.syncthing.options_["relaysEnabled"] = True
    relay.emit("ConfigSaved", version=36)
    relay.run(1)
    assert relay.syncthing.options_["relaysEnabled"] is False
    assert relay.syncthing.writes[writes_before:] == [
        ("PATCH", "options", {"relaysEnabled": False})]


def test_syncthing_restarting_is_followed_by_a_new_configuration_and_look(relay):
    sha = write_package(relay.root, "firefox", {"setup.exe": b"x"})
    relay.syncthing.stop()  # the poll in progress is cut
    relay.run(1)
    assert not relay.controller.connected
    assert "unreachable" in relay.controller.status_line()
    relay.syncthing.folders_.clear()  # a new Syncthing, an empty config
    relay.syncthing.available = True
    relay.syncthing.restart()
    relay.run(31)
    assert relay.controller.connected
    assert FOLDER_ID in relay.syncthing.folders_
    assert marker(relay.root, "firefox") == sha


def test_a_restart_between_two_polls_is_noticed_by_its_start_time(relay):
    calls = relay.syncthing.calls.count("folder")
    relay.syncthing.starts += 1  # restarted, but no poll was cut
    relay.run(61)
    assert relay.syncthing.calls.count("folder") == calls + 1  # configured again


def test_configuration_is_idempotent(tmp_path):
    node = Node(tmp_path / "packages", role="master")
    fake, settings = node.syncthing, node.settings
    first = defer.ensureDeferred(configure.apply(fake, settings, MASTER_ID))
    assert len(first.result) == 4
    writes = list(fake.writes)
    second = defer.ensureDeferred(configure.apply(fake, settings, MASTER_ID))
    assert second.result == [] and fake.writes == writes
    moved = Peer("lyon", LYON_ID, ("tcp://10.0.0.9:22000",))
    settings = Settings(**{**settings.__dict__, "peers": (moved,)})
    third = defer.ensureDeferred(configure.apply(fake, settings, MASTER_ID))
    assert third.result == ["device lyon: addresses"]
    assert fake.writes[len(writes):] == [
        ("PATCH", "device", LYON_ID, {"addresses": ["tcp://10.0.0.9:22000"]})]


def test_a_device_paused_by_the_admin_stays_paused(tmp_path):
    node = Node(tmp_path / "packages", role="master")
    fake = node.syncthing
    defer.ensureDeferred(configure.apply(fake, node.settings, MASTER_ID))
    fake.devices_[LYON_ID]["paused"] = True
    assert defer.ensureDeferred(configure.apply(fake, node.settings, MASTER_ID)).result == []


def test_stopping_leaves_nothing_scheduled(relay):
    d = relay.stop()
    assert d.called
    assert relay.clock.getDelayedCalls() == []


def test_markers_of_a_previous_run_are_announced_not_rewritten(tmp_path):
    root = tmp_path / "packages"
    sha = write_package(root, "firefox", {"setup.exe": b"x"})
    (root / ".complete").mkdir(parents=True)
    (root / ".complete" / "firefox").write_text(json.dumps({"descriptor_sha256": sha}))
    before = (root / ".complete" / "firefox").stat().st_mtime_ns
    node = Node(root).start()
    node.run(1)
    assert node.listener.take() == [("complete", "lyon", "firefox", sha)]
    assert (root / ".complete" / "firefox").stat().st_mtime_ns == before
    node.stop()


def test_stopping_while_verifying_does_not_wait_for_the_thread(tmp_path):
    thread = GatedThread()
    node = Node(tmp_path / "packages", thread=thread).start()
    write_package(node.root, "firefox", {"setup.exe": b"x"})
    node.run(1)
    assert len(thread.waiting) == 1
    d = node.stop()
    assert d.called
    thread.release()  # the thread's late answer changes nothing
    assert marker(node.root, "firefox") is None and node.listener.take() == []


def test_items_outside_any_package_are_harmless(relay):
    relay.emit("ItemStarted", item="", action="update", type="file")
    relay.emit("ItemStarted", item=".stignore", action="update", type="file")
    relay.run(1)
    assert relay.controller.last_error is None
