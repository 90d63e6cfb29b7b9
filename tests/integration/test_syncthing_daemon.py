"""medulla-syncthing as systemd runs it, against a real Syncthing on loopback: READY=1 only
once Syncthing answered and the configuration is applied, the API key read from
Syncthing's config.xml when no key file exists, SIGHUP applies new peers, SIGTERM stops."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from medulla_appliance.testing.syncthing import SyncthingInstance

pytestmark = pytest.mark.integration
DAEMON = [sys.executable, "-m", "medulla_appliance.syncthing"]
RELAY_ID = "YPDKACQ-DJ5TONZ-4ZOLBDY-ZNMJYSK-O6IL4ER-D32AQID-HAJARTL-3LRCTA7"


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket collecting messages."""

    def __init__(self, folder):
        self.path = str(folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def lines(self):
        return [line for m in self.messages for line in m.split("\n")]

    def collect(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass

    def wait_for(self, line, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.lines():
                return
            self.collect(0.2)
        raise AssertionError("no %r in %r" % (line, self.messages))


def test_ready_after_syncthing_answered_reload_and_stop(tmp_path):
    syncthing = SyncthingInstance(tmp_path / "syncthing", "master")
    notify = NotifySocket(tmp_path)
    ini = tmp_path / "syncthing.ini"
    ini.write_text(f"""[syncthing]
role = master
api_url = {syncthing.api_url}
api_key_file = {tmp_path / "no-such.key"}
config_xml = {syncthing.config_xml}
packages_root = {tmp_path / "packages"}
[devices]
listen = {syncthing.sync_address}
""")
    log = open(tmp_path / "daemon.log", "wb")
    process = subprocess.Popen(DAEMON + ["--config", str(ini)], stdout=log,
                               stderr=subprocess.STDOUT,
                               env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    try:
        notify.collect(2)
        assert "READY=1" not in notify.lines()  # Syncthing is not there yet
        syncthing.start()  # writes config.xml with its API key: read as the fallback
        notify.wait_for("READY=1", timeout=40)
        folder = syncthing.rest("GET", "/rest/config/folders/medulla-packages")
        assert folder["type"] == "sendonly"
        options = syncthing.rest("GET", "/rest/config/options")
        assert not (options["globalAnnounceEnabled"] or options["localAnnounceEnabled"]
                    or options["relaysEnabled"] or options["natEnabled"])
        assert options["urAccepted"] == -1 and options["autoUpgradeIntervalH"] == 0

        ini.with_name("syncthing.ini.local").write_text(
            f"[devices]\npeers = lyon {RELAY_ID} tcp://127.0.0.1:1\n")
        notify.messages.clear()
        process.send_signal(signal.SIGHUP)
        notify.wait_for("READY=1")
        deadline = time.monotonic() + 10
        devices = []
        while time.monotonic() < deadline:
            devices = [d["deviceID"] for d in syncthing.rest("GET", "/rest/config/devices")]
            if RELAY_ID in devices:
                break
            time.sleep(0.1)
        assert RELAY_ID in devices
        folder = syncthing.rest("GET", "/rest/config/folders/medulla-packages")
        assert RELAY_ID in [d["deviceID"] for d in folder["devices"]]

        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
        syncthing.stop()
