"""An in-memory double of :class:`medulla_appliance.syncthing.rest.SyncthingClient`,
following Syncthing 1.19's REST behaviour, for the controller's unit tests (the real
Syncthing runs in the integration tests: :mod:`medulla_appliance.testing.syncthing`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from twisted.internet import defer

from medulla_appliance.syncthing.rest import SyncthingNotFound, SyncthingUnavailable

DEFAULT_OPTIONS = {
    "listenAddresses": ["default"], "globalAnnounceServers": ["default"],
    "globalAnnounceEnabled": True, "localAnnounceEnabled": True, "relaysEnabled": True,
    "natEnabled": True, "urAccepted": 0, "crashReportingEnabled": True,
    "autoUpgradeIntervalH": 12, "startBrowser": True, "limitBandwidthInLan": False,
}
DEFAULT_FOLDER = {
    "label": "", "filesystemType": "basic", "path": "~", "type": "sendreceive",
    "rescanIntervalS": 3600, "fsWatcherEnabled": True, "fsWatcherDelayS": 10,
    "ignorePerms": False, "autoNormalize": True, "order": "random", "ignoreDelete": False,
    "paused": False, "markerName": ".stfolder",
    "versioning": {"type": "", "params": {}, "cleanupIntervalS": 3600, "fsPath": "",
                   "fsType": "basic"},
}
DEFAULT_DEVICE = {"addresses": ["dynamic"], "compression": "metadata", "introducer": False,
                  "paused": False, "autoAcceptFolders": False, "maxSendKbps": 0,
                  "maxRecvKbps": 0}
FAKE_DEVICE_ID = "AAAAAAA-BBBBBBB-CCCCCCC-DDDDDDD-EEEEEEE-FFFFFFF-GGGGGGG-HHHHHHH"


class FakeSyncthingClient:
    """SyncthingClient's interface over Syncthing 1.19's behaviour, in memory: a config
    (options, devices, folders, ignores), what the folder needs, the events buffer with
    its long-poll, and restarts. ``writes`` records every configuration change made.

    Set ``available = False`` to make every call fail as a stopped Syncthing would.
    """

    def __init__(self, clock, my_id: str = FAKE_DEVICE_ID) -> None:
        self.clock = clock
        self.my_id = my_id
        self.available = True
        self.starts = 1
        self.options_ = json.loads(json.dumps(DEFAULT_OPTIONS))
        self.devices_ = {my_id: {**DEFAULT_DEVICE, "deviceID": my_id, "name": "fake"}}
        self.folders_: dict[str, dict] = {}
        self.ignores_: dict[str, list] = {}
        self.summary_: dict[str, dict] = {}
        self.need_: dict[str, list] = {}
        self.remote_need_: dict[tuple[str, str], list] = {}
        self.completion_: dict[tuple[str, str], dict] = {}
        # folder -> {path: (size, mtime_ns, devices holding it)}: the global index
        self.index_: dict[str, dict[str, tuple]] = {}
        self.writes: list[tuple] = []
        self.calls: list[str] = []
        self.reverted: list[str] = []
        self.events_: list[dict] = []
        self._next_event = 1
        self._polls: list[tuple] = []

    # -- driving it from a test ------------------------------------------------------
    def emit(self, kind: str, **data) -> dict:
        event = {"id": self._next_event, "globalID": self._next_event, "type": kind,
                 "time": "2026-01-01T00:00:00Z", "data": data}
        self._next_event += 1
        self.events_.append(event)
        polls, self._polls = self._polls, []
        for since, d, call in polls:
            if call.active():
                call.cancel()
            d.callback([e for e in self.events_ if e["id"] > since])
        return event

    def restart(self) -> None:
        """Syncthing restarted: a new start time, event ids from 1 again, polls cut."""
        self.starts += 1
        self.events_.clear()
        self._next_event = 1
        self._cut_polls()

    def stop(self) -> None:
        self.available = False
        self._cut_polls()

    def index_folder(self, folder_id: str, root: os.PathLike | str, holders=()) -> None:
        """Make the global index hold every file under ``root`` as it is now, held by
        the devices ``holders`` (besides this one)."""
        root = Path(root)
        self.index_[folder_id] = {}
        for path in root.rglob("*"):
            name = path.relative_to(root)
            if path.is_file() and not any(part.startswith(".") for part in name.parts):
                info = path.stat()
                self.index_[folder_id][str(name)] = (info.st_size, info.st_mtime_ns,
                                                     set(holders))

    def hold(self, folder_id: str, device_id: str, prefix: str = "") -> None:
        """``device_id`` now holds the global version of the files under ``prefix``."""
        for name, (_size, _mtime, holders) in self.index_.get(folder_id, {}).items():
            if name.startswith(prefix):
                holders.add(device_id)

    def _cut_polls(self) -> None:
        polls, self._polls = self._polls, []
        for _since, d, call in polls:
            if call.active():
                call.cancel()
            d.errback(SyncthingUnavailable("GET /rest/events: connection lost"))

    def _answer(self, name: str, value=None):
        self.calls.append(name)
        if not self.available:
            return defer.fail(SyncthingUnavailable(f"{name}: connection refused"))
        return defer.succeed(json.loads(json.dumps(value)))

    def _write(self, *what):
        self.writes.append(what)

    # -- SyncthingClient's interface ---------------------------------------------------
    def close(self):
        return defer.succeed(None)

    def status(self):
        return self._answer("status", {"myID": self.my_id,
                                       "startTime": f"2026-01-01T00:00:{self.starts:02d}Z"})

    def restart_required(self):
        return self._answer("restart_required", {"requiresRestart": False})

    def options(self):
        return self._answer("options", self.options_)

    def patch_options(self, changes):
        d = self._answer("patch_options")
        if self.available:
            self.options_.update(changes)
            self._write("PATCH", "options", changes)
        return d

    def devices(self):
        return self._answer("devices", list(self.devices_.values()))

    def put_device(self, device):
        d = self._answer("put_device")
        if self.available:
            self.devices_[device["deviceID"]] = {**DEFAULT_DEVICE, **device}
            self._write("PUT", "device", device["deviceID"])
        return d

    def patch_device(self, device_id, changes):
        d = self._answer("patch_device")
        if self.available:
            self.devices_[device_id].update(changes)
            self._write("PATCH", "device", device_id, changes)
        return d

    def folder(self, folder_id):
        return self._answer("folder", self.folders_.get(folder_id))

    def put_folder(self, folder):
        d = self._answer("put_folder")
        if self.available:
            devices = list(folder.get("devices") or ())
            if self.my_id not in {x["deviceID"] for x in devices}:
                devices.insert(0, {"deviceID": self.my_id})  # as Syncthing does
            self.folders_[folder["id"]] = {**DEFAULT_FOLDER, **folder, "devices": devices}
            self._write("PUT", "folder", folder["id"])
        return d

    def patch_folder(self, folder_id, changes):
        d = self._answer("patch_folder")
        if self.available:
            self.folders_[folder_id].update(changes)
            self._write("PATCH", "folder", folder_id, changes)
        return d

    def ignores(self, folder_id):
        lines = self.ignores_.get(folder_id)
        return self._answer("ignores", {"ignore": lines, "expanded": None, "error": None})

    def set_ignores(self, folder_id, lines):
        d = self._answer("set_ignores")
        if self.available:
            self.ignores_[folder_id] = list(lines)
            self._write("POST", "ignores", folder_id)
        return d

    def db_status(self, folder_id):
        need = self.need_.get(folder_id, [])
        summary = {"state": "idle", "needTotalItems": len(need), "receiveOnlyTotalItems": 0,
                   **self.summary_.get(folder_id, {})}
        return self._answer("db_status", summary)

    def need(self, folder_id):
        return self._answer("need", self.need_.get(folder_id, []))

    def remote_need(self, folder_id, device_id):
        return self._answer("remote_need", self.remote_need_.get((folder_id, device_id), []))

    def completion(self, folder_id, device_id=None):
        need = self.remote_need_.get((folder_id, device_id), [])
        default = {"completion": 100 if not need else 50, "needItems": len(need),
                   "needDeletes": 0, "globalItems": 0, "needBytes": 0, "globalBytes": 0}
        return self._answer("completion",
                            self.completion_.get((folder_id, device_id), default))

    def file(self, folder_id, name):
        entry = self.index_.get(folder_id, {}).get(name)
        if entry is None:
            self.calls.append("file")
            return defer.fail(SyncthingNotFound("GET", "/rest/db/file", 404, b"no such object"))
        size, mtime_ns, holders = entry
        seconds, nanos = divmod(mtime_ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
        return self._answer("file", {
            "global": {"name": name, "size": size, "modified": stamp, "deleted": False},
            "availability": [{"id": device, "fromTemporary": False}
                             for device in sorted(holders)]})

    def scan(self, folder_id, sub=None):
        return self._answer("scan")

    def revert(self, folder_id):
        d = self._answer("revert")
        if self.available:
            self.reverted.append(folder_id)
            self.summary_.setdefault(folder_id, {})["receiveOnlyTotalItems"] = 0
        return d

    def events(self, since=0, *, timeout=60, types=None, limit=None):
        d = self._answer("events")
        if not self.available:
            return d
        wanted = [e for e in self.events_ if not types or e["type"] in types]
        if limit:
            return defer.succeed(wanted[-limit:])
        ready = [e for e in wanted if e["id"] > since]
        if ready or not timeout:
            return defer.succeed(ready)
        waiting = defer.Deferred(lambda d: self._forget_poll(d))
        call = self.clock.callLater(timeout, lambda: self._poll_timeout(waiting))
        self._polls.append((since, waiting, call))
        return waiting

    def _forget_poll(self, d):
        for poll in [p for p in self._polls if p[1] is d]:
            self._polls.remove(poll)
            if poll[2].active():
                poll[2].cancel()

    def _poll_timeout(self, d):
        self._polls = [p for p in self._polls if p[1] is not d]
        d.callback([])
