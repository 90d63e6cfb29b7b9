"""The packages folder on disk: which packages are there, whether each one matches its
descriptor (sizes and SHA-256), and the ``.complete/<package_id>`` markers medulla-relay
serves by.

Blocking code: ``scan`` and ``verify`` read and hash files, so the controller runs them in a
thread. Marker writes and removals are tiny and run on the reactor, which orders them with
the Syncthing events that withdraw a marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass

from ..packages.token import PACKAGE_ID_RE
from ..relay.packages import COMPLETE_DIR, DESCRIPTOR, MAX_DESCRIPTOR_BYTES, parse_files

#: The packages folder's Syncthing ignore patterns (contract with medulla-master/-relay).
IGNORE_PATTERNS = ("/.complete", "/.incoming-*", ".stversions")
HASH_CHUNK_BYTES = 1024 * 1024
MAX_MARKER_BYTES = 64 * 1024


class Interrupted(Exception):
    """The daemon is stopping: verification given up half-way."""


def _never():
    return False


@dataclass(frozen=True)
class Verified:
    """What one package folder holds right now: complete (``descriptor_sha256`` set) or
    not, and why not (``problem``). ``fingerprint`` is the stat of every file checked."""

    package_id: str
    descriptor_sha256: str | None
    fingerprint: tuple | None
    problem: str | None = None
    files: int = 0
    size: int = 0

    @property
    def complete(self) -> bool:
        return self.descriptor_sha256 is not None


def list_packages(root: str) -> list[str]:
    """Names of the package folders under ``root`` (hidden and odd names skipped)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if PACKAGE_ID_RE.fullmatch(name)
                  and os.path.isdir(os.path.join(root, name)))


def _stat_key(info) -> tuple:
    return (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)


def _inside(real_folder: str, path: str) -> str | None:
    real = os.path.realpath(os.path.join(real_folder, path))
    return real if real.startswith(real_folder + os.sep) else None


def _read_descriptor(folder: str) -> tuple[bytes, os.stat_result]:
    fd = os.open(os.path.join(folder, DESCRIPTOR), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_DESCRIPTOR_BYTES:
            raise ValueError(f"{DESCRIPTOR} is not a regular file of at most "
                             f"{MAX_DESCRIPTOR_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_DESCRIPTOR_BYTES + 1), info
    finally:
        os.close(fd)


def _sha256(path: str, interrupted=_never) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            if interrupted():
                raise Interrupted(path)
            digest.update(chunk)
    return digest.hexdigest()


def verify(root: str, package_id: str, cached: Verified | None = None,
           interrupted=_never) -> Verified:
    """Check one package against its descriptor: every listed file there, inside the
    folder, of its size and SHA-256. Hashing is skipped when nothing changed on disk
    since ``cached`` (same fingerprint); ``interrupted()`` true stops it (Interrupted)."""
    folder = os.path.join(root, package_id)

    def incomplete(problem, fingerprint=None):
        return Verified(package_id, None, fingerprint, problem)

    try:
        raw, info = _read_descriptor(folder)
        files = parse_files(raw)
    except FileNotFoundError:
        return incomplete(f"no {DESCRIPTOR}")
    except OSError as exc:
        return incomplete(f"{DESCRIPTOR}: {exc.strerror or exc}")
    except ValueError as exc:
        return incomplete(str(exc))
    arriving = _syncthing_temp_file(folder)
    if arriving is not None:
        # The old files may still match the old descriptor, but a new version is on its
        # way in: offering the old one now could hand an agent half of each.
        return incomplete(f"Syncthing is still writing {arriving!r}")
    real_folder = os.path.realpath(folder)
    stats = [(DESCRIPTOR, *_stat_key(info))]
    paths = {}
    for entry in files.values():
        real = _inside(real_folder, entry.path)
        if real is None:
            return incomplete(f"{entry.path!r} leads out of the package folder")
        try:
            file_info = os.stat(real)
        except OSError:
            return incomplete(f"{entry.path!r} is missing")
        if not stat.S_ISREG(file_info.st_mode):
            return incomplete(f"{entry.path!r} is not a regular file")
        if file_info.st_size != entry.size:
            return incomplete(f"{entry.path!r} has {file_info.st_size} bytes, the descriptor "
                              f"says {entry.size}")
        stats.append((entry.path, *_stat_key(file_info)))
        paths[entry.path] = real
    fingerprint = tuple(stats)
    if cached is not None and cached.fingerprint == fingerprint:
        return cached
    for entry in files.values():
        try:
            digest = _sha256(paths[entry.path], interrupted)
        except OSError as exc:
            return incomplete(f"{entry.path!r}: {exc.strerror or exc}")
        if digest != entry.sha256:
            return incomplete(f"{entry.path!r}: SHA-256 does not match the descriptor",
                              fingerprint)
    # A file replaced while we hashed it: what we read proves nothing about what is there.
    again = verify_fingerprint(root, package_id, files)
    if again != fingerprint:
        return incomplete("changed while being verified")
    return Verified(package_id, hashlib.sha256(raw).hexdigest(), fingerprint, None,
                    len(files), sum(e.size for e in files.values()))


def _syncthing_temp_file(folder: str) -> str | None:
    """A Syncthing temporary file under ``folder`` (a transfer in progress), if any."""
    for directory, _dirs, names in os.walk(folder):
        for name in names:
            if (name.startswith(".syncthing.") or name.startswith("~syncthing~")) \
                    and name.endswith(".tmp"):
                return os.path.relpath(os.path.join(directory, name), folder)
    return None


def verify_fingerprint(root: str, package_id: str, files) -> tuple | None:
    """The fingerprint of a package's descriptor and ``files`` as they are now."""
    folder = os.path.join(root, package_id)
    real_folder = os.path.realpath(folder)
    try:
        stats = [(DESCRIPTOR, *_stat_key(os.stat(os.path.join(folder, DESCRIPTOR))))]
        for entry in files.values():
            real = _inside(real_folder, entry.path)
            if real is None:
                return None
            stats.append((entry.path, *_stat_key(os.stat(real))))
    except OSError:
        return None
    return tuple(stats)


def scan(root: str, cache: dict[str, Verified], interrupted=_never
         ) -> tuple[dict[str, Verified], dict[str, str]]:
    """Every package under ``root`` verified (``cache`` updated in place, entries of
    vanished packages dropped) and the markers found: ``({id: Verified}, {id: sha})``."""
    found = {}
    for package_id in list_packages(root):
        found[package_id] = cache[package_id] = verify(root, package_id, cache.get(package_id),
                                                       interrupted)
    for gone in set(cache) - set(found):
        del cache[gone]
    return found, read_markers(root)


# -- markers -------------------------------------------------------------------------------
def marker_dir(root: str) -> str:
    return os.path.join(root, COMPLETE_DIR)


def ensure_layout(root: str) -> None:
    """The packages folder and its marker folder exist."""
    os.makedirs(marker_dir(root), mode=0o755, exist_ok=True)


def read_markers(root: str) -> dict[str, str]:
    """``{package_id: descriptor_sha256}`` of the markers present ("" when unreadable)."""
    markers = {}
    try:
        names = os.listdir(marker_dir(root))
    except FileNotFoundError:
        return markers
    for name in names:
        if not PACKAGE_ID_RE.fullmatch(name):
            continue
        try:
            with open(os.path.join(marker_dir(root), name), "rb") as handle:
                content = json.loads(handle.read(MAX_MARKER_BYTES))
            markers[name] = str(content["descriptor_sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            markers[name] = ""
    return markers


def write_marker(root: str, verified: Verified) -> None:
    """``.complete/<id>`` written atomically (temporary file renamed over it)."""
    directory = marker_dir(root)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    body = json.dumps({"package_id": verified.package_id,
                       "descriptor_sha256": verified.descriptor_sha256,
                       "files": verified.files, "bytes": verified.size},
                      sort_keys=True).encode("utf-8") + b"\n"
    final = os.path.join(directory, verified.package_id)
    tmp = os.path.join(directory, f".{verified.package_id}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_marker(root: str, package_id: str) -> bool:
    """Remove ``.complete/<id>``; True if there was one."""
    try:
        os.unlink(os.path.join(marker_dir(root), package_id))
        return True
    except FileNotFoundError:
        return False
