"""Secret files (keys, tokens) created once, atomically, readable by their owner only."""

import os


def create_private_file(path: str, data: bytes) -> bool:
    """Write ``data`` to a new file ``path`` with mode 0600; False if ``path`` exists.

    The data goes to a temporary file created 0600 from the start (there is no moment when
    others could read it), is flushed to disk, then linked to ``path``: link() never
    replaces a file, so when two starts race both end up with the one secret on disk
    instead of one silently losing its own. The directory is synced so that the new name
    survives a power cut. OSError says what failed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits; make 0600 explicit
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            if os.path.lexists(path):
                return False
            os.rename(tmp, path)  # file systems without hard links
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    _fsync_dir(directory)
    return True


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # durability of the directory entry is best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
