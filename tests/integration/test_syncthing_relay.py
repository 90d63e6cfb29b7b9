"""Two real Syncthing instances (master and relay) on 127.0.0.1 with direct addresses and
no discovery or relays, each driven by a real medulla-syncthing process: a package added
on the master becomes deployable on the relay (``.complete/<id>``) only once it is fully
there and verified; a changed package loses then regains its marker; a deleted one loses
it; the controller follows Syncthing through a restart."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from medulla_appliance.testing.syncthing import SyncthingInstance

pytestmark = pytest.mark.integration
DAEMON = [sys.executable, "-m", "medulla_appliance.syncthing"]
FOLDER = "medulla-packages"
#: The relay receives this fast (KiB/s) when a test wants to watch a transfer.
SLOW_KIB_PER_SECOND = 1500


class Node:
    """One Syncthing plus the medulla-syncthing daemon driving it."""

    def __init__(self, workdir, role, name):
        self.workdir, self.role, self.name = workdir, role, name
        self.syncthing = SyncthingInstance(workdir / "syncthing", name)
        self.root = workdir / "packages"
        self.log_path = workdir / "medulla-syncthing.log"
        self.process = None

    def configure(self, peer_name, peer):
        key = self.syncthing.write_api_key(self.workdir / "api.key")
        (self.workdir / "syncthing.ini").write_text(f"""[global]
log_level = DEBUG
[syncthing]
role = {self.role}
name = {self.name}
api_url = {self.syncthing.api_url}
api_key_file = {key}
packages_root = {self.root}
watch_delay = 1s
settle_delay = 200ms
request_timeout = 5s
[devices]
peers = {peer_name} {peer.syncthing.device_id} {peer.syncthing.sync_address}
listen = {self.syncthing.sync_address}
""")

    def start_daemon(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                DAEMON + ["--config", str(self.workdir / "syncthing.ini")], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop_daemon(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def marker(self, package_id):
        try:
            return json.loads((self.root / ".complete" / package_id).read_text())[
                "descriptor_sha256"]
        except FileNotFoundError:
            return None

    def log(self):
        return self.log_path.read_text(errors="replace")


def wait_for(predicate, timeout, what, nodes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    logs = "\n".join(f"--- {n.name}:\n{n.log()[-3000:]}" for n in nodes)
    raise AssertionError(f"{what}: not within {timeout}s\n{logs}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("syncthing-pair")
    master = Node(workdir / "master", "master", "master")
    relay = Node(workdir / "relay", "relay", "relay1")
    nodes = (master, relay)
    try:
        for node in nodes:
            node.syncthing.start()
        master.configure("relay1", relay)
        relay.configure("master", master)
        for node in nodes:
            node.start_daemon()
        for node in nodes:
            wait_for(lambda n=node: _has_folder(n), 20, f"{node.name} configured", nodes)
        wait_for(lambda: master.syncthing.connected(relay.syncthing.device_id), 20,
                 "master and relay connected", nodes)
        yield master, relay
    finally:
        for node in nodes:
            node.stop_daemon()
            node.syncthing.stop()


def _has_folder(node):
    try:
        return node.syncthing.rest("GET", f"/rest/config/folders/{FOLDER}") is not None
    except Exception:
        return False


def add_package(root, package_id, files):
    """A package the way medulla-master writes one: built in .incoming-*, then renamed.
    Returns the SHA-256 of its descriptor."""
    building = root / f".incoming-{package_id}"
    building.mkdir(parents=True)
    raw = _write(building, package_id, files)
    os.rename(building, root / package_id)
    return hashlib.sha256(raw).hexdigest()


def replace_package_files(root, package_id, files):
    """New contents for an existing package: each file renamed into place, the descriptor
    last. Returns the new descriptor's SHA-256."""
    staging = root / f".incoming-{package_id}-next"
    staging.mkdir()
    raw = _write(staging, package_id, files)
    for path in files:
        os.replace(staging / path, root / package_id / path)
    os.replace(staging / "descriptor.json", root / package_id / "descriptor.json")
    staging.rmdir()
    return hashlib.sha256(raw).hexdigest()


def _write(folder, package_id, files):
    for path, content in files.items():
        (folder / path).write_bytes(content)
    raw = json.dumps({"schema": 1, "id": package_id, "name": package_id, "version": "1",
                      "os": ["linux"], "sequences": {}, "files": [
                          {"path": p, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
                          for p, c in files.items()]}, indent=1).encode()
    (folder / "descriptor.json").write_bytes(raw)
    return raw


def transfer_in_progress(relay, package_id, files):
    """True while the relay's copy of the package is not yet all there: Syncthing temporary
    files, or a listed file missing or of another size."""
    folder = relay.root / package_id
    if not folder.is_dir():
        return True
    if any(p.name.startswith(".syncthing.") for p in folder.iterdir()):
        return True
    for path, content in files.items():
        try:
            if (folder / path).stat().st_size != len(content):
                return True
        except FileNotFoundError:
            return True
    return False


def test_a_package_becomes_deployable_on_the_relay_only_after_completion(pair):
    master, relay = pair
    relay.syncthing.limit_receive_rate(master.syncthing.device_id, SLOW_KIB_PER_SECOND)
    files = {"setup.bin": os.urandom(6 * 1024 * 1024), "install.sh": b"#!/bin/sh\necho ok\n"}
    sha = add_package(master.root, "firefox-128", files)
    told = f"package firefox-128 complete on relay1 (descriptor {sha[:12]})"
    seen = []  # (marker, transfer in progress, the master believes it there) every 50 ms
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        seen.append((relay.marker("firefox-128"),
                     transfer_in_progress(relay, "firefox-128", files), told in master.log()))
        if seen[-1][0] is not None and seen[-1][2]:
            break
        time.sleep(0.05)
    relay.syncthing.limit_receive_rate(master.syncthing.device_id, 0)
    assert seen[-1][0] == sha, relay.log()[-3000:]
    assert seen[-1][2], master.log()[-3000:]
    assert any(busy and marker is None for marker, busy, _ in seen), \
        "the transfer was never observed in progress"
    assert not any(marker is not None and busy for marker, busy, _ in seen), \
        "the marker appeared while files were still arriving"
    assert not any(believed and busy for _, busy, believed in seen), \
        "the master believed the relay complete while files were still arriving"
    for path, content in files.items():
        assert hashlib.sha256((relay.root / "firefox-128" / path).read_bytes()).digest() == \
            hashlib.sha256(content).digest()
    assert master.marker("firefox-128") == sha  # the master is a relay for its own LAN


def test_a_changed_package_loses_then_regains_its_marker(pair):
    master, relay = pair
    old = add_package(master.root, "7zip", {"7z.msi": b"v1" * 1000})
    wait_for(lambda: relay.marker("7zip") == old, 20, "first version offered", pair)
    relay.syncthing.limit_receive_rate(master.syncthing.device_id, SLOW_KIB_PER_SECOND)
    new_files = {"7z.msi": os.urandom(4 * 1024 * 1024)}
    new = replace_package_files(master.root, "7zip", new_files)
    told = f"package 7zip complete on relay1 (descriptor {new[:12]})"
    seen = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        seen.append((relay.marker("7zip"), transfer_in_progress(relay, "7zip", new_files),
                     told in master.log()))
        if seen[-1][0] == new and seen[-1][2]:
            break
        time.sleep(0.05)
    relay.syncthing.limit_receive_rate(master.syncthing.device_id, 0)
    markers = [marker for marker, _, _ in seen]
    assert markers[-1] == new, relay.log()[-3000:]
    assert None in markers, "the old marker was never removed"
    first_gap = markers.index(None)
    assert set(markers[first_gap:-1]) == {None}, "the old marker came back"
    assert not any(marker == new and busy for marker, busy, _ in seen)
    assert any(busy and marker is None for marker, busy, _ in seen)
    assert seen[-1][2] and not any(believed and busy for _, busy, believed in seen)


def test_a_deleted_package_loses_its_marker(pair):
    master, relay = pair
    sha = add_package(master.root, "old-tool", {"tool.exe": b"t" * 100})
    wait_for(lambda: relay.marker("old-tool") == sha, 20, "package offered", pair)
    shutil.rmtree(master.root / "old-tool")
    wait_for(lambda: relay.marker("old-tool") is None and not (relay.root / "old-tool").exists(),
             20, "package withdrawn and deleted on the relay", pair)
    wait_for(lambda: master.marker("old-tool") is None, 10, "master marker removed", pair)


def test_the_controller_follows_syncthing_through_a_restart(pair):
    master, relay = pair
    relay.syncthing.restart()
    sha = add_package(master.root, "after-restart", {"a.txt": b"after"})
    wait_for(lambda: relay.marker("after-restart") == sha, 30,
             "package offered after the relay's Syncthing restarted", pair)
    assert relay.process.poll() is None
    assert "Syncthing unreachable" in relay.log()
