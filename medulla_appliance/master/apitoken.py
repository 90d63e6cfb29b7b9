"""The bearer token that guards the master's admin API.

medulla-master calls :func:`ensure_token` at start-up: the first start creates the
token file, later starts reuse it, so ``medullactl`` keeps working across restarts.
``medullactl`` calls :func:`read_token`. Both refuse a token file that anyone but its
owner can open, because that file is the whole of the API's authentication.
"""

from __future__ import annotations

import os
import secrets
import stat
from typing import Callable

from ..core.private_file import create_private_file

#: Where the Debian packages put it (StateDirectory=medulla/master of the unit).
DEFAULT_TOKEN_PATH = "/var/lib/medulla/master/api-token"

#: A token file bigger than this is not ours; refuse rather than read a huge file.
MAX_TOKEN_FILE_BYTES = 4096

#: Who may read the token file: the account medulla-master runs as, and root.
TOKEN_READERS = "root or the account medulla-master runs as (sudo medullactl ...)"


class TokenFileError(Exception):
    """The token file is missing, unreadable, too open, empty or malformed.

    ``str(error)`` is one line that names the file and says what to do.
    """


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def ensure_token(path: str, *, generate: Callable[[], str] = _new_token) -> str:
    """Return the API token stored at *path*, creating the file (mode 0600) if missing.

    The file appears atomically with its content and its final mode: the token is
    written to a private temporary file opened with ``O_CREAT|O_EXCL`` and mode 0600,
    then hard-linked into place. ``link`` never overwrites, so when several processes
    race, exactly one token wins and every caller returns that one; a reader never sees
    an empty, half-written or briefly world-readable file.
    """
    parent = os.path.dirname(os.path.abspath(path))
    try:
        # mode only applies to a directory we create; an existing StateDirectory keeps
        # the mode systemd gave it.
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as e:
        raise TokenFileError(f"cannot create directory {parent} for the API token {path}: "
                             f"{_reason(e)}") from None
    if not os.path.lexists(path):
        _create(path, generate())
    return _read(path, hint="")


def read_token(path: str) -> str:
    """Return the token at *path* for a client; :class:`TokenFileError` says why not."""
    return _read(path, hint=f" — run medullactl as {TOKEN_READERS}")


def _create(path: str, token: str) -> None:
    _check_token(path, token)
    try:
        # False: another process won the race; its token is the one to use.
        create_private_file(path, (token + "\n").encode("ascii"))
    except OSError as e:
        raise TokenFileError(f"cannot create API token {path}: {_reason(e)}") from None


def _read(path: str, *, hint: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise TokenFileError(f"cannot read API token {path}: permission denied{hint}") from None
    except FileNotFoundError:
        raise TokenFileError(f"cannot read API token {path}: no such file — medulla-master "
                             "creates it when it starts (systemctl start medulla-master)") from None
    except OSError as e:
        raise TokenFileError(f"cannot read API token {path}: {_reason(e)}{hint}") from None
    try:
        # fstat the open file, not the path, so a swap between check and read is moot.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"API token {path} is not a regular file")
        if st.st_mode & 0o077:
            raise TokenFileError(
                f"API token {path} is accessible to group/other (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); refusing it — fix with: chmod 600 {path}")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise TokenFileError(f"cannot read API token {path}: {_reason(e)}{hint}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenFileError(f"API token {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"API token {path} is not ASCII text") from None
    _check_token(path, token)
    return token


def _check_token(path: str, token: str) -> None:
    if not token:
        raise TokenFileError(f"API token {path} is empty; delete it and restart "
                             "medulla-master to create a new one")
    # The token travels in an HTTP header: anything but visible ASCII would either
    # break the header or let the file inject another one.
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise TokenFileError(f"API token {path} contains spaces or control characters")


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()
