"""Packages on disk: `ROOT/<id>/descriptor.json` and each listed file at its relative
path under `ROOT/<id>/`.

A package appears whole or not at all: it is copied and checked in
`ROOT/.incoming-<id>-<random>/`, then renamed into place. Only files the descriptor lists
are copied, each with its size and SHA-256 checked on the way; symbolic links in the source
are refused, so a package can never carry a file from elsewhere on the machine.

Blocking I/O: callers run these methods in a thread (`threads.deferToThread`).
"""

import hashlib
import os
import secrets
import shutil
import stat
import time
from typing import NamedTuple

from .descriptor import (
    ID_RE,
    MAX_DESCRIPTOR_BYTES,
    Descriptor,
    canonical_descriptor_bytes,
    check_file_path,
    descriptor_sha256,
    parse_descriptor,
)

DESCRIPTOR = "descriptor.json"
CHUNK = 1024 * 1024
LEFTOVER_PREFIXES = (".incoming-", ".old-", ".trash-")


class StoreError(Exception):
    """A store operation refused or failed; the message says which package and file."""


class PackageNotFound(StoreError):
    """No package with that id in the store."""


class PackageExists(StoreError):
    """A package with that id is already there (pass `replace=True` to replace it)."""


class BadFile(NamedTuple):
    """A file `verify` found wrong, and why (missing, size, SHA-256, symlink...)."""

    path: str
    reason: str


class PackageStore:
    """The package folders under `root` (created if missing)."""

    def __init__(self, root):
        os.makedirs(root, mode=0o755, exist_ok=True)
        self.root = os.path.realpath(root)

    # -- reading ------------------------------------------------------------------------

    def list(self):
        """Sorted ids of the packages present."""
        ids = []
        for name in os.listdir(self.root):
            if ID_RE.match(name) and os.path.isfile(os.path.join(self.root, name, DESCRIPTOR)):
                ids.append(name)
        return sorted(ids)

    def descriptor_bytes(self, package_id):
        """The exact bytes of a package's descriptor.json."""
        path = os.path.join(self._folder(package_id), DESCRIPTOR)
        try:
            return _read_limited(path, MAX_DESCRIPTOR_BYTES)
        except FileNotFoundError:
            raise PackageNotFound("no package %r" % package_id) from None
        except OSError as e:
            raise StoreError("package %r: cannot read its descriptor: %s"
                             % (package_id, e.strerror)) from None

    def descriptor_sha256(self, package_id):
        """Hex SHA-256 of the descriptor bytes, as agents check it."""
        return descriptor_sha256(self.descriptor_bytes(package_id))

    def get(self, package_id):
        """The package's `Descriptor`; `StoreError` if it is missing or does not parse."""
        raw = self.descriptor_bytes(package_id)
        try:
            descriptor = parse_descriptor(raw)
        except ValueError as e:
            raise StoreError("package %r: bad descriptor: %s" % (package_id, e)) from None
        if descriptor.id != package_id:
            raise StoreError("package %r: its descriptor says id %r" % (package_id,
                                                                        descriptor.id))
        return descriptor

    def path_of(self, package_id, file_path):
        """Absolute path of a file in a package; `StoreError` for a path that is not a
        plain relative path or that leads (through a symbolic link) out of the package."""
        problem = check_file_path(file_path)
        if problem:
            raise StoreError("package %r: refused path: %s" % (package_id, problem))
        folder = self._folder(package_id)
        if not os.path.isdir(folder):
            raise PackageNotFound("no package %r" % package_id)
        joined = os.path.join(folder, *file_path.split("/"))
        real = os.path.realpath(joined)
        if not real.startswith(os.path.realpath(folder) + os.sep):
            raise StoreError("package %r: %r leads out of the package" % (package_id,
                                                                         file_path[:64]))
        return joined

    def verify(self, package_id):
        """Re-hash every listed file: the `BadFile`s found (an empty list when all is well)."""
        descriptor = self.get(package_id)
        folder = os.path.realpath(self._folder(package_id))
        bad = []
        for entry in descriptor.files:
            path = os.path.join(folder, *entry.path.split("/"))
            if os.path.realpath(path) != path:
                bad.append(BadFile(entry.path, "symbolic link in its path"))
                continue
            try:
                size, sha = _hash_file(path, entry.size)
            except FileNotFoundError:
                bad.append(BadFile(entry.path, "missing"))
                continue
            except (OSError, StoreError) as e:
                bad.append(BadFile(entry.path, str(e)))
                continue
            if size != entry.size:
                bad.append(BadFile(entry.path, "size %d, expected %d" % (size, entry.size)))
            elif sha != entry.sha256:
                bad.append(BadFile(entry.path, "SHA-256 %s, expected %s" % (sha, entry.sha256)))
        return bad

    # -- changing -----------------------------------------------------------------------

    def add_from_folder(self, src_folder, descriptor=None, *, replace=False):
        """Copy a package in from `src_folder` and return its `Descriptor`.

        `descriptor`: None (read `src_folder/descriptor.json`), raw JSON bytes (kept as
        they are, so their SHA-256 stays the one signed), a dict or a `Descriptor` (stored
        as canonical JSON). Raises `DescriptorError`, `PackageExists` or `StoreError`.
        """
        src = os.path.realpath(src_folder)
        if not os.path.isdir(src):
            raise StoreError("%s is not a folder" % src_folder)
        if descriptor is None:
            try:
                descriptor = _read_limited(_inside(src, DESCRIPTOR), MAX_DESCRIPTOR_BYTES)
            except FileNotFoundError:
                raise StoreError("no %s in %s" % (DESCRIPTOR, src_folder)) from None
        if isinstance(descriptor, Descriptor):
            parsed, raw = descriptor, canonical_descriptor_bytes(descriptor)
        elif isinstance(descriptor, (bytes, bytearray)):
            raw = bytes(descriptor)
            parsed = parse_descriptor(raw)
        else:
            parsed = parse_descriptor(descriptor)
            raw = canonical_descriptor_bytes(parsed)
        target = self._folder(parsed.id)
        if os.path.lexists(target) and not replace:
            raise PackageExists("package %r already exists" % parsed.id)
        incoming = os.path.join(self.root, ".incoming-%s-%s" % (parsed.id, secrets.token_hex(6)))
        os.mkdir(incoming, 0o755)
        try:
            for entry in parsed.files:
                self._copy_in(src, incoming, entry)
            _write_synced(os.path.join(incoming, DESCRIPTOR), raw)
            _fsync_dir(incoming)
            self._swap_in(incoming, target, parsed.id, replace)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return parsed

    def remove(self, package_id):
        """Delete a package (it disappears at once, its files are removed after)."""
        folder = self._folder(package_id)
        trash = os.path.join(self.root, ".trash-%s-%s" % (package_id, secrets.token_hex(6)))
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            raise PackageNotFound("no package %r" % package_id) from None
        _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def cleanup(self, max_age=3600.0, now=time.time):
        """Remove what interrupted adds and removes left behind (older than `max_age`)."""
        removed = []
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name.startswith(LEFTOVER_PREFIXES) and now() - os.lstat(path).st_mtime > max_age:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        return removed

    # -- internals ----------------------------------------------------------------------

    def _folder(self, package_id):
        if not isinstance(package_id, str) or not ID_RE.match(package_id):
            raise PackageNotFound("invalid package id %r" % str(package_id)[:64])
        return os.path.join(self.root, package_id)

    def _copy_in(self, src, incoming, entry):
        source = _inside(src, entry.path)
        dest = os.path.join(incoming, *entry.path.split("/"))
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise StoreError("%s: missing from %s" % (entry.path, src)) from None
        except OSError as e:
            raise StoreError("%s: cannot open (%s)" % (entry.path, e.strerror)) from None
        with os.fdopen(fd, "rb") as f, open(dest, "xb") as out:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StoreError("%s: not a regular file" % entry.path)
            for chunk in iter(lambda: f.read(CHUNK), b""):
                size += len(chunk)
                if size > entry.size:
                    raise StoreError("%s: larger than the %d bytes the descriptor says"
                                     % (entry.path, entry.size))
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != entry.size:
            raise StoreError("%s: %d bytes, the descriptor says %d" % (entry.path, size,
                                                                       entry.size))
        if digest.hexdigest() != entry.sha256:
            raise StoreError("%s: SHA-256 %s, the descriptor says %s"
                             % (entry.path, digest.hexdigest(), entry.sha256))

    def _swap_in(self, incoming, target, package_id, replace):
        old = None
        if replace and os.path.lexists(target):
            old = os.path.join(self.root, ".old-%s-%s" % (package_id, secrets.token_hex(6)))
            os.rename(target, old)
        try:
            os.rename(incoming, target)
        except OSError as e:
            if old is not None:
                os.rename(old, target)
            raise PackageExists("package %r appeared meanwhile (%s)" % (package_id,
                                                                       e.strerror)) from None
        _fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _inside(base, relative):
    """`base/relative`, refusing any symbolic link on the way (base is a real path)."""
    joined = os.path.join(base, *relative.split("/"))
    if os.path.realpath(joined) != joined:
        raise StoreError("%s: a symbolic link is in the way; refused" % relative)
    return joined


def _read_limited(path, limit):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise StoreError("%s is larger than %d bytes" % (path, limit))
    return data


def _hash_file(path, limit):
    """(size, sha256) of a regular file; the hash is skipped ("") when the size is not
    `limit`."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise StoreError("not a regular file")
        if info.st_size != limit:
            return info.st_size, ""
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return info.st_size, digest.hexdigest()


def _write_synced(path, data):
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
