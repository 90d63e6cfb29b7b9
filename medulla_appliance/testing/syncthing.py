"""A real Syncthing (the Debian package) on loopback, for tests and the demo.

Each instance has its own home folder (keys, config.xml, database, log), a GUI/REST port and
a sync port on 127.0.0.1, a random API key, and nothing that leaves the machine: global and
local discovery, relays, NAT traversal, usage and crash reporting and upgrades are off in
config.xml before Syncthing first starts, so not one packet goes out even at start-up.
It is started in the foreground (``--no-restart``: the PID we hold is Syncthing itself) and
stopped by that PID.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

from medulla_appliance.testing.ports import LOOPBACK, free_tcp_port
from medulla_appliance.testing.processes import ProcessSet, tail

SYNCTHING = "syncthing"
#: config.xml options that keep an instance on loopback and quiet.
QUIET_OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
    "restartOnWakeup": "false",
    # Loopback counts as LAN; without this a receive rate limit would not apply to it.
    "limitBandwidthInLan": "true",
}


# Strong references: a started instance must not be garbage-collected into an orphan.
_started: set[SyncthingInstance] = set()


class SyncthingError(RuntimeError):
    """An instance did not start, or its REST API refused a call."""


class SyncthingInstance:
    """One Syncthing, reachable at ``api_url`` with ``api_key``, syncing on
    ``sync_address`` (``tcp://127.0.0.1:PORT``)."""

    def __init__(self, workdir: os.PathLike | str, name: str = "syncthing") -> None:
        self.workdir = Path(workdir).absolute()
        self.name = name
        self.home = self.workdir / "home"
        self.gui_port = free_tcp_port()
        self.sync_port = free_tcp_port()
        self.api_key = secrets.token_urlsafe(24)
        self.device_id = ""
        self._process: subprocess.Popen | None = None
        self._processes = ProcessSet()

    # -- addresses -------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.gui_port}"

    @property
    def sync_address(self) -> str:
        return f"tcp://{LOOPBACK}:{self.sync_port}"

    @property
    def config_xml(self) -> Path:
        return self.home / "config.xml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "syncthing.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def write_api_key(self, path: os.PathLike | str) -> Path:
        """The API key in a 0600 file, as medulla-syncthing's api_key_file wants it."""
        path = Path(path)
        path.write_text(self.api_key + "\n")
        path.chmod(0o600)
        return path

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        """Generate keys and a quiet config on first start; return once REST answers."""
        if self.running:
            raise SyncthingError(f"{self.name} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.config_xml.exists():
            self._generate()
        self._write_quiet_config()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [SYNCTHING, "serve", f"--home={self.home}", "--no-browser", "--no-restart",
                 "--no-upgrade", "--logflags=3"],
                env=self._environment(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self._processes.add_tree(self._process.pid)
        _started.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise SyncthingError(f"{self.name} exited with {self._process.returncode}:\n"
                                     f"{tail(self.log_path)}")
            try:
                status = self.rest("GET", "/rest/system/status", timeout=2)
            except (OSError, SyncthingError):
                time.sleep(0.1)
                continue
            self.device_id = status["myID"]
            return
        self.stop()
        raise SyncthingError(f"{self.name}: REST not up after {timeout}s:\n{tail(self.log_path)}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM by PID, SIGKILL what is left after ``timeout``; safe to repeat."""
        if self.running:
            self._processes.add_tree(self._process.pid)
            self._process.send_signal(signal.SIGTERM)
            self._processes.wait_gone(timeout, reap=self._process.poll)
        self.kill()

    def kill(self) -> None:
        """SIGKILL every process of this instance, as a crash would."""
        if self._process is not None:
            if self.running:
                self._processes.add_tree(self._process.pid)
            self._processes.signal(signal.SIGKILL)
            self._process.wait()
            self._processes.wait_gone(10)
        self._processes.clear()
        _started.discard(self)

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> SyncthingInstance:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- REST, blocking (for tests) ----------------------------------------------------
    def rest(self, method: str, path: str, body=None, timeout: float = 10):
        """One REST call; the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.api_url + path, data=data, method=method,
                                         headers={"X-API-Key": self.api_key,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise SyncthingError(f"{method} {path}: HTTP {exc.code}: "
                                 f"{exc.read()[:300]!r}") from None
        return json.loads(raw) if raw.strip() else None

    def limit_receive_rate(self, device_id: str, kib_per_second: int) -> None:
        """Receive from ``device_id`` at most this fast (0: unlimited), to watch a transfer."""
        self.rest("PATCH", f"/rest/config/devices/{device_id}",
                  {"maxRecvKbps": kib_per_second})

    def pause_device(self, device_id: str) -> None:
        self.rest("POST", f"/rest/system/pause?device={device_id}")

    def resume_device(self, device_id: str) -> None:
        self.rest("POST", f"/rest/system/resume?device={device_id}")

    def connected(self, device_id: str) -> bool:
        connections = self.rest("GET", "/rest/system/connections")["connections"]
        return bool(connections.get(device_id, {}).get("connected"))

    # -- internals -------------------------------------------------------------------
    def _environment(self) -> dict:
        env = {key: value for key, value in os.environ.items() if not key.startswith("ST")}
        env.update(HOME=str(self.home), STNODEFAULTFOLDER="1", STNOUPGRADE="1",
                   STNORESTART="1",
                   # A named SHA-256 implementation skips the start-up benchmark (~2 s).
                   STHASHING="minio")
        return env

    def _generate(self) -> None:
        result = subprocess.run(
            [SYNCTHING, "generate", f"--home={self.home}", "--no-default-folder",
             "--skip-port-probing"],
            env=self._environment(), capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not self.config_xml.exists():
            raise SyncthingError(f"syncthing generate failed ({result.returncode}): "
                                 f"{result.stdout}{result.stderr}")

    def _write_quiet_config(self) -> None:
        tree = ElementTree.parse(self.config_xml)
        root = tree.getroot()
        self.device_id = root.find("device").get("id")
        gui = root.find("gui")
        gui.set("tls", "false")
        _set(gui, "address", f"{LOOPBACK}:{self.gui_port}")
        _set(gui, "apikey", self.api_key)
        options = root.find("options")
        for element in options.findall("listenAddress"):
            options.remove(element)
        _set(options, "listenAddress", self.sync_address)
        for name, value in QUIET_OPTIONS.items():
            _set(options, name, value)
        tree.write(self.config_xml)


@atexit.register
def _kill_leftovers() -> None:
    # A run that ends without its fixtures' teardown must leave no Syncthing behind.
    for instance in list(_started):
        instance.kill()


def _set(parent, tag: str, text: str) -> None:
    element = parent.find(tag)
    if element is None:
        element = ElementTree.SubElement(parent, tag)
    element.text = text
