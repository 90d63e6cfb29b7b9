"""Process plumbing for servers that tests start: users, limits, and stopping by PID.

Nothing here knows about XMPP; any harness that runs a daemon as its system user on
loopback (prosody, ejabberd, and the like) can use it.
"""

from __future__ import annotations

import os
import pwd
import resource
import signal
import subprocess
import time
from pathlib import Path

# Benchmarks open ~5,000 client connections; the server needs an fd for each and some more.
WANTED_NOFILE = 65536


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for its parent counts as gone."""
    stat = read_stat(pid)
    return stat is not None and stat[0] != "Z"


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants, parents first (empty if ``pid`` is gone)."""
    if not pid_alive(pid):
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat[0] != "Z":
                children.setdefault(stat[1], []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def raise_nofile() -> None:
    """Lift the open-file limit; meant as ``preexec_fn``, before privileges are dropped."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # Only root with CAP_SYS_RESOURCE may raise the hard limit; containers often lack it.
        resource.setrlimit(resource.RLIMIT_NOFILE, (WANTED_NOFILE, max(WANTED_NOFILE, hard)))
    except (ValueError, OSError):
        ceiling = WANTED_NOFILE if hard == resource.RLIM_INFINITY else min(WANTED_NOFILE, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, ceiling), hard))


def as_user(argv: list[str], user: str | None) -> list[str]:
    """``argv`` run as ``user`` through setpriv (keeps our rlimits), or as is for None."""
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]


def can_reach(path: Path, user: str) -> bool:
    """Whether ``user`` may search every existing folder above ``path``, as they are now."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)}
    for folder in path.resolve().parents:
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue  # we create it, with mode 0755
        if info.st_uid == entry.pw_uid:
            bit = 0o100
        elif info.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not info.st_mode & bit:
            return False
    return True


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


class ProcessSet:
    """The processes one server instance consists of, known by (pid, start time).

    The start time guards against PID reuse: a process that died and whose PID went to
    somebody else is never signalled.
    """

    def __init__(self) -> None:
        self._known: set[tuple[int, int]] = set()

    def add_tree(self, root: int) -> None:
        """Remember ``root`` and every process below it right now."""
        for pid in process_tree(root):
            stat = read_stat(pid)
            if stat is not None:
                self._known.add((pid, stat[2]))

    def alive(self) -> list[int]:
        return sorted(pid for pid, started in self._known
                      if (stat := read_stat(pid)) and stat[0] != "Z" and stat[2] == started)

    def signal(self, signum: int = signal.SIGKILL) -> None:
        for pid in self.alive():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def wait_gone(self, timeout: float, reap=None) -> bool:
        """Wait until none is alive; ``reap`` is called meanwhile to collect our child."""
        deadline = time.monotonic() + timeout
        while True:
            if reap is not None:
                reap()
            if not self.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def clear(self) -> None:
        self._known.clear()


def stop_process(proc, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, the one process we started
    (a ``subprocess.Popen``), and reap it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
