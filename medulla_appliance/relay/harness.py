"""Packages on disk and a medulla-relay process on loopback, for tests and benchmarks.

Nothing here runs in the daemon: ``write_package`` lays out a package as medulla-syncthing
leaves it (files, descriptor.json, the ``.complete`` marker) and ``RelayProcess`` runs
``python -m medulla_appliance.relay`` on a free port of 127.0.0.1, stopped by its PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..core import keys
from ..packages.token import make_token
from ..testing.ports import LOOPBACK, free_tcp_port
from .packages import COMPLETE_DIR, DESCRIPTOR

_COPY_BYTES = 1 << 20


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, _COPY_BYTES))
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def write_package(root: Path, package_id: str, files: dict[str, bytes | int], *,
                  complete: bool = True) -> dict:
    """Create ``root/package_id`` with ``files`` ({path: content or size in bytes}), its
    descriptor and, if ``complete``, its completion marker; returns the descriptor."""
    folder = Path(root) / package_id
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            sha256, size = write_random_file(path, content), content
        else:
            path.write_bytes(content)
            sha256, size = hashlib.sha256(content).hexdigest(), len(content)
        listed.append({"path": rel, "sha256": sha256, "size": size})
    descriptor = {"schema": 1, "id": package_id, "name": package_id, "version": "1",
                  "os": ["linux"], "files": listed, "sequences": {}}
    (folder / DESCRIPTOR).write_text(json.dumps(descriptor, indent=1))
    if complete:
        mark_complete(root, package_id)
    return descriptor


def mark_complete(root: Path, package_id: str) -> None:
    """What medulla-syncthing does once Syncthing reports the package complete here."""
    (Path(root) / COMPLETE_DIR).mkdir(parents=True, exist_ok=True)
    (Path(root) / COMPLETE_DIR / package_id).touch()


def token_for(private_key, package_id: str, *, ttl: float = 3600, now: float | None = None,
              dep: str = "dep-test", sub: str = "agent.abc@medulla.test") -> str:
    now = time.time() if now is None else now
    return make_token(private_key, {"pkg": package_id, "dep": dep, "sub": sub,
                                    "exp": int(now + ttl)}, now)


class RelayProcess:
    """``medulla-relay`` as a process on 127.0.0.1 (a free port), in ``folder``."""

    def __init__(self, folder: Path, packages_root: Path, public_key, *,
                 max_downloads: int = 1000, per_client: int = 1000, idle_timeout: str = "60s",
                 sendfile: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.config = self.folder / "relay.ini"
        self.config.write_text(
            "[global]\nlog_level = INFO\n"
            f"[http]\nlisten = tcp:{self.port}:interface={LOOPBACK}\n"
            f"idle_timeout = {idle_timeout}\nsendfile = {'yes' if sendfile else 'no'}\n"
            f"[packages]\nroot = {packages_root}\nmax_downloads = {max_downloads}\n"
            f"max_downloads_per_client = {per_client}\n"
            f"[keys]\nmaster_public_key = {keys.public_key_text(public_key)}\n")
        self.log_path = self.folder / "relay.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 20.0) -> RelayProcess:
        from ..testing.processes import raise_nofile
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "medulla_appliance.relay", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=raise_nofile,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("medulla-relay exited with %s:\n%s" % (
                    self.process.returncode, self.log_path.read_text(errors="replace")))
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("medulla-relay did not listen within %.0f s" % timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
