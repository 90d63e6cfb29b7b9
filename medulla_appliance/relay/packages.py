"""The packages this relay may serve: which are complete, which files they list.

On disk (PROTOCOL.md, "Transfers")::

    ROOT/PACKAGE_ID/descriptor.json      {"files": [{"path", "sha256", "size"}], ...}
    ROOT/PACKAGE_ID/<path>               each listed file
    ROOT/.complete/PACKAGE_ID            written by medulla-syncthing once Syncthing
                                         reports the folder complete here

A package is served only while its ``.complete`` marker exists, its descriptor parses and
every listed file has its declared size. That check runs once per descriptor version (the
cache key holds the descriptor's mtime, size and inode); the marker is looked at on every
request, so taking it away stops the serving at once. Only listed paths are ever opened.

This reads descriptor.json with the few checks serving needs (``files[].path/size/sha256``);
the full descriptor parser lives elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field

from ..packages.token import PACKAGE_ID_RE

DESCRIPTOR = "descriptor.json"
COMPLETE_DIR = ".complete"
#: A descriptor lists files; this is far above any real one.
MAX_DESCRIPTOR_BYTES = 8 * 1024 * 1024
MAX_PATH_CHARS = 4096
MAX_CACHED_PACKAGES = 4096
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class NotServed(Exception):
    """A package or file this relay does not serve: ``reason`` is ``not-found`` or
    ``not-synchronized``; the message says why, for the log."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason, self.message = reason, message

    def __str__(self):
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Entry:
    """One servable file: its path in the package, size and SHA-256 (hex)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Package:
    """A complete package: its folder, listed files and descriptor bytes."""

    id: str
    folder: str
    descriptor: bytes = field(repr=False)
    descriptor_entry: Entry = field(repr=False)
    files: dict[str, Entry] = field(repr=False)


def valid_file_path(path) -> bool:
    """True for a relative POSIX path with no empty, ``.`` or ``..`` segment, no backslash,
    no NUL and no control character."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
        return False
    if path.startswith("/") or "\\" in path or any(ord(c) < 32 or c == "\x7f" for c in path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def parse_files(raw: bytes) -> dict[str, Entry]:
    """The ``files`` of a descriptor as ``{path: Entry}``; ValueError saying what is wrong."""
    try:
        descriptor = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("descriptor.json is not UTF-8 JSON") from None
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("files"), list):
        raise ValueError("descriptor.json has no 'files' list")
    files: dict[str, Entry] = {}
    for number, item in enumerate(descriptor["files"], 1):
        where = f"files[{number}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        path, size, sha256 = item.get("path"), item.get("size"), item.get("sha256")
        if not valid_file_path(path) or path == DESCRIPTOR:
            raise ValueError(f"{where}.path is not a relative path inside the package")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{where}.size is not a byte count")
        if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
            raise ValueError(f"{where}.sha256 is not 64 lower-case hex digits")
        if path in files:
            raise ValueError(f"{where}.path {path!r} is listed twice")
        files[path] = Entry(path, size, sha256)
    return files


class PackageStore:
    """Finds complete packages under ``root`` and opens their listed files."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._cache: dict[str, tuple[tuple, Package]] = {}

    def package(self, package_id: str) -> Package:
        """The package, if complete here; raises NotServed."""
        if not PACKAGE_ID_RE.fullmatch(package_id):
            raise NotServed("not-found", "not a package id")
        if not os.path.isfile(os.path.join(self.root, COMPLETE_DIR, package_id)):
            self._cache.pop(package_id, None)
            raise NotServed("not-synchronized", "no completion marker")
        folder = os.path.join(self.root, package_id)
        descriptor_path = os.path.join(folder, DESCRIPTOR)
        try:
            info = os.stat(descriptor_path)
        except OSError as exc:
            raise NotServed("not-synchronized", f"descriptor.json: {exc.strerror}") from None
        version = (info.st_mtime_ns, info.st_size, info.st_ino, info.st_dev)
        cached = self._cache.get(package_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        package = self._load(package_id, folder, descriptor_path, info)
        if len(self._cache) >= MAX_CACHED_PACKAGES:
            self._cache.clear()
        self._cache[package_id] = (version, package)
        return package

    def _load(self, package_id, folder, descriptor_path, info) -> Package:
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_DESCRIPTOR_BYTES:
            raise NotServed("not-synchronized", "descriptor.json is not a regular file "
                            f"of at most {MAX_DESCRIPTOR_BYTES} bytes")
        try:
            with open(descriptor_path, "rb") as handle:
                raw = handle.read(MAX_DESCRIPTOR_BYTES + 1)
            files = parse_files(raw)
        except OSError as exc:
            raise NotServed("not-synchronized", f"descriptor.json: {exc.strerror}") from None
        except ValueError as exc:
            raise NotServed("not-synchronized", str(exc)) from None
        real_folder = os.path.realpath(folder)
        for entry in files.values():
            size = self._size(real_folder, entry.path)
            if size != entry.size:
                found = "missing" if size is None else f"{size} bytes"
                raise NotServed("not-synchronized",
                                f"{entry.path!r}: {found}, the descriptor says {entry.size}")
        entry = Entry(DESCRIPTOR, len(raw), hashlib.sha256(raw).hexdigest())
        return Package(package_id, real_folder, raw, entry, files)

    @staticmethod
    def _real_path(real_folder: str, path: str) -> str | None:
        """The file's real path if it stays inside the package folder (symlinks resolved)."""
        real = os.path.realpath(os.path.join(real_folder, path))
        return real if real.startswith(real_folder + os.sep) else None

    def _size(self, real_folder: str, path: str) -> int | None:
        real = self._real_path(real_folder, path)
        if real is None:
            return None
        try:
            info = os.stat(real)
        except OSError:
            return None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def open(self, package: Package, entry: Entry) -> int:
        """An O_RDONLY file descriptor on ``entry`` (the caller closes it); raises NotServed
        when it left the package folder or no longer has its declared size."""
        real = self._real_path(package.folder, entry.path)
        if real is None:
            raise NotServed("not-found", f"{entry.path!r} leads out of the package folder")
        try:
            # The resolved path is opened without following links again.
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            self._cache.pop(package.id, None)
            raise NotServed("not-synchronized", f"{entry.path!r}: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
            os.close(fd)
            self._cache.pop(package.id, None)
            raise NotServed("not-synchronized",
                            f"{entry.path!r} is no longer a file of {entry.size} bytes")
        return fd
