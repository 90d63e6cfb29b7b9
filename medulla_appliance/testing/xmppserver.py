"""Real XMPP servers (prosody, ejabberd) on loopback, for tests, the demo and benchmarks.

Each instance has its own config, data, logs and TLS certificate in one folder, listens
only on 127.0.0.1 on a free port, and is stopped by PID. Nothing under /etc and no system
service is read or changed.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from xml.etree.ElementTree import ParseError

from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.ports import LOOPBACK, free_tcp_port
from medulla_appliance.testing.processes import (
    ProcessSet,
    as_user,
    can_reach,
    raise_nofile,
    tail,
)
from medulla_appliance.testing.xmppprobe import check_starttls

KINDS = ("prosody", "ejabberd")
# Strong references: a started server must not be garbage-collected into an orphan.
_started: set[XMPPServer] = set()
_relocated: set[Path] = set()


class ServerError(RuntimeError):
    """A server did not start, or its admin tool failed."""


class XMPPServer:
    """One prosody or ejabberd instance, reachable on ``127.0.0.1:c2s_port``.

    Subclasses say how to configure, launch, administer and gracefully stop their server;
    this class runs it as the server's system user when we are root, waits until STARTTLS
    really works, and makes sure every process it started is gone after :meth:`stop`.

    The server's files live in ``workdir`` when its user can reach that folder. Otherwise
    (pytest's ``tmp_path`` sits below folders of mode 0700, whose mode pytest resets when
    another session starts) they live in a folder of their own under the temp dir,
    ``workdir/runtime`` points there, and :meth:`close` copies the logs back into
    ``workdir`` and removes it. Call :meth:`close` (or use ``with``) when done.
    """

    kind = ""
    system_user = ""
    log_name = ""
    # A line with one of these in the log means the start failed though the process lives.
    fatal_log_lines: tuple[str, ...] = ()

    def __init__(self, workdir: os.PathLike | str, domain: str, ca: CertificateAuthority,
                 log_level: str = "info") -> None:
        self.workdir = Path(workdir).absolute()
        self.root = self.workdir  # where the server's own files are; see _choose_root()
        self.domain = domain
        self.ca = ca
        self.log_level = log_level
        self.host = LOOPBACK
        self.c2s_port = free_tcp_port()
        self._process: subprocess.Popen | None = None
        self._processes = ProcessSet()

    # -- what subclasses provide -------------------------------------------------------
    def _write_config(self, cert_path: Path, key_path: Path) -> None:
        raise NotImplementedError

    def _server_argv(self) -> list[str]:
        raise NotImplementedError

    def _register_argv(self, user: str, password: str) -> list[str]:
        raise NotImplementedError

    def _graceful_stop(self, timeout: float) -> None:
        """Ask the server to shut down; by default SIGTERM to the server process."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGTERM)

    # -- public interface --------------------------------------------------------------
    @property
    def run_as(self) -> str | None:
        """The user the server runs as: its system user when we are root, else None (us)."""
        return self.system_user if os.geteuid() == 0 else None

    @property
    def log_path(self) -> Path:
        return self.root / self.log_name

    @property
    def console_path(self) -> Path:
        """The server's stdout and stderr: errors from before its own logging starts."""
        return self.root / "console.log"

    @property
    def pid(self) -> int | None:
        """PID of the process that serves XMPP, None when not running."""
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def processes(self) -> list[int]:
        """PIDs of every live process of this instance (launcher, server, helpers)."""
        if self.running:  # once reaped, its PID may belong to somebody else
            self._processes.add_tree(self._process.pid)
        return self._processes.alive()

    def start(self, timeout: float = 60) -> None:
        """Write the config, launch the server, return once STARTTLS works on the port."""
        if self.running:
            raise ServerError(f"{self.kind} in {self.root} is already running")
        self._prepare()
        with open(self.console_path, "ab") as console:
            self._process = subprocess.Popen(
                as_user(self._server_argv(), self.run_as), cwd=self.root,
                env=self._environment(), stdin=subprocess.DEVNULL, stdout=console,
                stderr=subprocess.STDOUT, preexec_fn=raise_nofile,
                # Its own session: a Ctrl-C meant for pytest must not hit the server
                # before the fixtures stop it.
                start_new_session=True)
        self._processes.add_tree(self._process.pid)
        _started.add(self)
        self._wait_ready(time.monotonic() + timeout)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (or the server's own way), SIGKILL what is left after ``timeout``.

        Safe to call again, and on a server that was never started.
        """
        if self.running:
            self.processes()
            try:
                self._graceful_stop(timeout)
            except (ServerError, subprocess.TimeoutExpired, OSError):
                pass  # the signals below end it anyway
            self._processes.wait_gone(timeout, reap=self._process.poll)
        self.kill()  # whatever outlived the timeout, and helpers that lost their parent

    def kill(self) -> None:
        """SIGKILL every process of this instance at once, as a crash would."""
        if self._process is not None:
            self.processes()
            self._processes.signal(signal.SIGKILL)
            self._process.wait()
            self._processes.wait_gone(10)
        self._processes.clear()
        _started.discard(self)

    def close(self) -> None:
        """Stop; if the files were kept outside ``workdir``, copy the logs there, drop them."""
        self.stop()
        if self.root != self.workdir:
            for name in (self.log_name, self.console_path.name):
                if (self.root / name).exists():
                    # Same relative place, so log_path stays true after close().
                    (self.workdir / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(self.root / name, self.workdir / name)
            (self.workdir / "runtime").unlink(missing_ok=True)
            shutil.rmtree(self.root, ignore_errors=True)
            _relocated.discard(self.root)
            self.root = self.workdir

    def detach(self) -> None:
        """Leave the server running after this program exits (`make demo KEEP=1`)."""
        _started.discard(self)
        _relocated.discard(self.root)

    def restart(self, timeout: float = 60) -> None:
        """Stop, then start on the same port with the same data."""
        self.stop()
        self.start(timeout)

    def register(self, user: str, password: str) -> None:
        """Create the account ``user@domain`` with the server's own admin tool."""
        result = self._admin(self._register_argv(user, password), timeout=60)
        if result.returncode != 0:
            raise ServerError(
                f"{self.kind}: registering {user}@{self.domain} failed "
                f"(exit {result.returncode}): {result.stdout.strip()}")

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def __enter__(self) -> XMPPServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.domain} on {self.host}:{self.c2s_port}>"

    # -- helpers -----------------------------------------------------------------------
    def _choose_root(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.root != self.workdir or self.run_as is None:
            return
        if can_reach(self.workdir, self.run_as):
            return
        base = Path(tempfile.gettempdir())
        if not can_reach(base / "probe", self.run_as):  # i.e. base and every folder above
            raise ServerError(f"user {self.run_as} can reach neither {self.workdir} nor {base}")
        self.root = Path(tempfile.mkdtemp(prefix=f"medulla-{self.kind}-", dir=base))
        _relocated.add(self.root)
        (self.workdir / "runtime").unlink(missing_ok=True)  # left by an earlier instance
        (self.workdir / "runtime").symlink_to(self.root)

    def _prepare(self) -> None:
        self._choose_root()
        tls_dir = self.root / "tls"
        cert_path, key_path = tls_dir / f"{self.domain}.pem", tls_dir / f"{self.domain}.key"
        # Reused across restarts; a folder left over from a run with another CA gets new ones.
        if not (key_path.exists() and self.ca.issued(cert_path)):
            cert_path, key_path = self.ca.issue_server(self.domain, tls_dir)
        # The CA's own folder may be private to us; the server gets a copy of ca.pem.
        (tls_dir / "ca.pem").write_bytes(self.ca.cert_path.read_bytes())
        self._write_config(cert_path, key_path)
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _environment(self) -> dict[str, str]:
        user = self.run_as or pwd.getpwuid(os.geteuid()).pw_name
        # HOME in our folder: Erlang keeps its cookie there, so each node has its own.
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root),
                "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}

    def _admin(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            as_user(argv, self.run_as), cwd=self.root, env=self._environment(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout, check=False)

    def _wait_ready(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running or self._log_says_fatal():
                break
            try:
                check_starttls(self.c2s_port, self.domain, self.ca.cert_path,
                               timeout=max(0.5, min(3.0, deadline - time.monotonic())))
                return
            except (OSError, ParseError) as error:
                last_error = error  # not listening yet, or not ready for TLS yet
            time.sleep(0.05)
        what = ("exited while starting" if not self.running else
                "logged a fatal error" if self._log_says_fatal() else
                "did not accept STARTTLS in time")
        self.kill()
        raise ServerError(
            f"{self.kind} on port {self.c2s_port} {what} (last probe: {last_error!r})\n"
            f"--- {self.log_path} ---\n{tail(self.log_path)}\n"
            f"--- {self.console_path} ---\n{tail(self.console_path)}")

    def _log_says_fatal(self) -> bool:
        if not self.fatal_log_lines or not self.log_path.exists():
            return False
        text = self.log_path.read_text(errors="replace")
        return any(line in text for line in self.fatal_log_lines)


@atexit.register
def _kill_leftovers() -> None:
    # A run that ends without its fixtures' teardown must leave no server and no folder.
    for server in list(_started):
        server.kill()
    for root in list(_relocated):
        shutil.rmtree(root, ignore_errors=True)


def make_server(kind: str, workdir: os.PathLike | str, domain: str,
                ca: CertificateAuthority, **options) -> XMPPServer:
    """A server of ``kind`` ("prosody" or "ejabberd") in ``workdir``, not started yet."""
    if kind == "prosody":
        from medulla_appliance.testing.prosody import ProsodyServer as server_class
    elif kind == "ejabberd":
        from medulla_appliance.testing.ejabberd import EjabberdServer as server_class
    else:
        raise ValueError(f"unknown XMPP server kind {kind!r}, expected one of {KINDS}")
    return server_class(workdir, domain, ca, **options)
