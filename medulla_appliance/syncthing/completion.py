"""When is a package complete, here and on each relay: decisions only, no I/O.

Here (the node's own ``.complete`` markers): Syncthing needs nothing more under the
package's folder (relays; on the master the folder is the source) AND the files on disk
match the descriptor. On the master, for each relay device: the package is complete here,
the relay holds the global version of every file of its descriptor (``availability`` of
``/rest/db/file``, one consistent record per file), and Syncthing lists nothing of it in
what the relay still needs. Completion percentages and need lists alone are not enough:
in Syncthing 1.19 they can lag a scan by a few milliseconds either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from .packages import Verified


class PackageListener(Protocol):
    """Told when a package becomes complete on a relay, and when it stops being so (it
    changed or disappeared). ``relay_name`` is this node's name for its own packages."""

    def on_package_complete(self, relay_name: str, package_id: str,
                            descriptor_sha256: str) -> None: ...

    def on_package_gone(self, relay_name: str, package_id: str,
                        descriptor_sha256: str) -> None: ...


def package_of(item_name: str) -> str:
    """The package an item of the folder belongs to: its first path component."""
    return item_name.split("/", 1)[0]


def pending_packages(need_items: Iterable[Mapping]) -> set[str]:
    """Packages with at least one item Syncthing still has to fetch, change or delete."""
    return {package_of(item["name"]) for item in need_items if item.get("name")}


def held_by(record: Mapping, device_id: str, size: int, mtime_ns: int | None = None) -> bool:
    """Whether a ``/rest/db/file`` answer says ``device_id`` has the global version of the
    file, and that version is the file on disk here (``size``, and ``mtime_ns`` when
    given). A temporary copy on the device does not count."""
    glob = record.get("global") or {}
    if glob.get("deleted") or glob.get("invalid") or glob.get("size") != size:
        return False
    if mtime_ns is not None and rfc3339_ns(glob.get("modified")) not in (None, mtime_ns):
        return False  # Syncthing has not scanned this version yet
    return any(holder.get("id") == device_id and not holder.get("fromTemporary")
               for holder in record.get("availability") or ())


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def rfc3339_ns(text) -> int | None:
    """Nanoseconds since the epoch of Syncthing's ``modified`` time, None if unreadable."""
    match = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    seconds = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


@dataclass
class Changes:
    """What one decision asks for: markers to remove and write, and what to tell."""

    remove: set[str] = field(default_factory=set)
    write: dict[str, Verified] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)
    completed: dict[str, str] = field(default_factory=dict)


class LocalCompletion:
    """The packages complete on this node, as its markers say."""

    def __init__(self, markers: Mapping[str, str] | None = None):
        self.complete: dict[str, str] = dict(markers or {})

    def decide(self, on_disk: Mapping[str, Verified], pending: set[str],
               markers: Mapping[str, str], *, may_write=lambda package_id: True) -> Changes:
        """Markers to change so that exactly the complete packages have one.

        ``may_write(id)`` is False for a package Syncthing touched while this decision was
        being prepared: its marker may be removed, never written, until a fresh look.
        """
        now = {pid: v.descriptor_sha256 for pid, v in on_disk.items()
               if v.complete and pid not in pending}
        changes = Changes()
        for pid, sha in markers.items():
            if now.get(pid) != sha:
                changes.remove.add(pid)
        for pid, sha in now.items():
            if markers.get(pid) != sha and may_write(pid):
                changes.write[pid] = on_disk[pid]
        for pid, sha in list(self.complete.items()):
            if now.get(pid) != sha:
                changes.gone[pid] = sha
                del self.complete[pid]
        for pid, sha in now.items():  # written now, or already right but not yet told
            if (pid in changes.write or markers.get(pid) == sha) and may_write(pid) \
                    and self.complete.get(pid) != sha:
                changes.completed[pid] = sha
        self.complete.update(changes.completed)
        return changes

    def withdraw(self, package_id: str) -> str | None:
        """Syncthing started changing the package: it is no longer complete. Returns the
        descriptor SHA-256 it was complete with, or None."""
        return self.complete.pop(package_id, None)


class RemoteCompletion:
    """The master's view: per relay name, ``{package_id: descriptor_sha256}`` complete."""

    def __init__(self):
        self.complete: dict[str, dict[str, str]] = {}

    def decide(self, relay: str, local: Mapping[str, str], held: set[str],
               pending: set[str]) -> tuple[dict[str, str], dict[str, str]]:
        """``(completed, gone)`` for ``relay`` given the master's complete packages, those
        whose every file the relay holds in its global version, and those it still needs
        items of."""
        before = self.complete.setdefault(relay, {})
        now = {pid: sha for pid, sha in local.items() if pid in held and pid not in pending}
        gone = {pid: sha for pid, sha in before.items() if now.get(pid) != sha}
        completed = {pid: sha for pid, sha in now.items() if before.get(pid) != sha}
        self.complete[relay] = now
        return completed, gone

    def forget(self, relay: str) -> dict[str, str]:
        """The relay left the configuration: everything it had is gone."""
        return self.complete.pop(relay, {})
