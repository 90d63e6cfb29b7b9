"""Where a requested name leads: a file under the TFTP root, a generated file, or a refusal.

``SafeRoot.open_read(name, client)`` returns a ``Source`` or raises a ``BackendError``
subclass whose ``code`` is the TFTP error to send and whose ``reason`` is one short word
for the log: ``FileNotFound`` (not-found) or ``AccessViolation`` (nul-byte, control-char,
backslash, absolute-path, parent-reference, symlink-escape, not-a-file, permission,
name-too-long), or plain ``BackendError`` (cannot-open: our own trouble, like EMFILE).
Nothing else decides what a client may read.

No name can leave the root: names with ``..`` components, a leading ``/``, backslashes
(Windows clients' ``..\\..\\``), NUL or control characters are refused before the file
system is touched; symlinks are followed only when their target stays inside the root,
and the opened descriptor itself is checked through ``/proc/self/fd`` so a symlink swapped
in between cannot win a race. Only regular files are served (no FIFO, device or folder).
"""

import errno
import io
import os
import stat
from dataclasses import dataclass

from .packets import ERR_ACCESS, ERR_NOT_FOUND, ERR_UNDEFINED

MAX_NAME_CHARS = 1024
READ_BUFFER_BYTES = 64 * 1024  # one disk read per 44 blocks of 1468: short, never huge
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW
_CONTROL = frozenset(chr(c) for c in range(0x20)) | {"\x7f"}


class BackendError(Exception):
    """A request that cannot be served; ``code`` is the TFTP error, ``reason`` a log word."""

    code = ERR_UNDEFINED

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self):
        return self.message


class FileNotFound(BackendError):
    code = ERR_NOT_FOUND


class AccessViolation(BackendError):
    code = ERR_ACCESS


@dataclass(frozen=True)
class ClientInfo:
    """Who asks: the client's address and port, and the server address it reached."""

    host: str
    port: int
    local_host: str = ""


class Source:
    """What a transfer reads from: ``read(n)``, ``close()``, and ``size`` when known."""

    __slots__ = ("read", "close", "size", "generated")

    def __init__(self, reader, size, generated=False):
        self.read = reader.read
        self.close = reader.close
        self.size = size
        self.generated = generated

    @classmethod
    def from_bytes(cls, data: bytes):
        return cls(io.BytesIO(data), len(data), generated=True)


class NetasciiReader:
    """RFC 764 netascii on the fly: LF becomes CR LF and CR becomes CR NUL.

    ``read(n)`` returns exactly n bytes until the end, whatever the expansion; each input
    byte converts on its own, so chunk boundaries cannot split a sequence.
    """

    def __init__(self, raw):
        self._raw = raw
        self._pending = b""
        self._eof = False

    def read(self, n: int) -> bytes:
        pending = self._pending
        while len(pending) < n and not self._eof:
            chunk = self._raw.read(n)
            if not chunk:
                self._eof = True
                break
            pending += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
        self._pending = pending[n:]
        return pending[:n]

    def close(self):
        self._raw.close()


def netascii(source: Source) -> Source:
    """``source`` converted to netascii; its size is no longer known in advance."""
    return Source(NetasciiReader(source), None, source.generated)


class Generators:
    """Files made per client, keyed by path: ``register("autoexec.ipxe", make)``.

    A key with no ``/`` matches that file name in any folder; a key with one matches that
    exact path. ``make(client, path)`` returns the bytes to send. A real file under the
    root always wins, so an admin can replace a generated file by writing one.
    """

    def __init__(self):
        self._paths = {}
        self._names = {}

    def register(self, key: str, make) -> None:
        (self._paths if "/" in key else self._names)[key.strip("/")] = make

    def find(self, path: str):
        return self._paths.get(path) or self._names.get(path.rsplit("/", 1)[-1])

    def __len__(self):
        return len(self._paths) + len(self._names)


def check_name(name: str) -> str:
    """The normalized relative path of ``name``; raises ``AccessViolation`` for escapes."""
    if len(name) > MAX_NAME_CHARS:
        raise AccessViolation("name-too-long", "file name longer than %d characters"
                              % MAX_NAME_CHARS)
    if "\0" in name:
        raise AccessViolation("nul-byte", "NUL byte in file name")
    if not _CONTROL.isdisjoint(name):
        raise AccessViolation("control-char", "control character in file name")
    # '..' first, with either separator: "..\\..\\x" and "/../x" are climbing attempts
    # (medulla-guard counts those), a bare backslash or a leading / is only a mistake.
    if ".." in name.replace("\\", "/").split("/"):
        raise AccessViolation("parent-reference", "'..' in file name")
    if "\\" in name:
        raise AccessViolation("backslash", "backslash in file name (use /)")
    if name.startswith("/"):
        raise AccessViolation("absolute-path", "absolute path (name files from the root)")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        raise FileNotFound("not-found", "no file name")
    return "/".join(parts)


class SafeRoot:
    """Opens files under ``root`` for reading, and generated files from ``generators``."""

    def __init__(self, root: str, generators: Generators | None = None):
        self.root = os.path.realpath(root)
        self._prefix = self.root.rstrip("/") + "/"
        self.generators = generators if generators is not None else Generators()

    def open_read(self, name: str, client: ClientInfo) -> Source:
        """A ``Source`` for ``name`` as ``client`` asked it; raises ``BackendError``."""
        path = check_name(name)
        try:
            return self._open_file(path)
        except FileNotFound:
            make = self.generators.find(path)
            if make is None:
                raise
        return Source.from_bytes(make(client, path))

    def _inside(self, real: str) -> bool:
        return real.startswith(self._prefix)

    def _open_file(self, path: str) -> Source:
        real = os.path.realpath(os.path.join(self.root, path))
        if not self._inside(real):
            if not os.path.lexists(os.path.join(self.root, path)):
                raise FileNotFound("not-found", "file not found")
            raise AccessViolation("symlink-escape", "symbolic link leads out of the root")
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise FileNotFound("not-found", "file not found") from None
        except PermissionError:
            raise AccessViolation("permission", "permission denied") from None
        except NotADirectoryError:
            raise FileNotFound("not-found", "file not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink appeared after realpath
                raise AccessViolation("symlink-escape", "symbolic link changed") from None
            # EMFILE, EIO...: our trouble, not the client's.
            raise BackendError("cannot-open", "cannot open: %s" % exc.strerror) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AccessViolation("not-a-file", "not a regular file")
            if not self._inside(_fd_path(fd, real)):
                raise AccessViolation("symlink-escape", "symbolic link leads out of the root")
            os.set_blocking(fd, True)
            reader = io.open(fd, "rb", buffering=READ_BUFFER_BYTES, closefd=True)
        except BaseException:
            os.close(fd)
            raise
        return Source(reader, info.st_size)


def _fd_path(fd: int, fallback: str) -> str:
    """The path the kernel says ``fd`` is open on (Linux); ``fallback`` without /proc."""
    try:
        return os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return fallback
