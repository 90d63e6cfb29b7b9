"""medulla-pxe and tftpd-hpa as processes on loopback, for the tests and the benchmark.

Both are started in the foreground on a free UDP port, and stopped by PID. tftpd-hpa logs
only to syslog, so its readiness is probed with a request for a file that does not exist.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..testing.ports import free_udp_port
from ..testing.processes import stop_process

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
READY_LINE = "TFTP listening on"


def probe(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TFTP server answers a read request at host:port (with any ERROR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"\x00\x01.medulla-probe-absent\x00octet\x00", (host, port))
        try:
            data, _ = sock.recvfrom(1024)
        except (TimeoutError, ConnectionRefusedError):
            return False
        return data[:2] == b"\x00\x05"


class PXEDaemon:
    """``python -m medulla_appliance.pxe`` with a generated pxe.ini, on 127.0.0.1 (+ ::1)."""

    def __init__(self, workdir, root, *, port=None, interfaces=("127.0.0.1",),
                 log_level="DEBUG", **tftp):
        self.workdir = Path(workdir)
        self.log_level = log_level
        self.root = Path(root)
        self.port = port or free_udp_port()
        self.interfaces = interfaces
        self.tftp = tftp
        self.config = self.workdir / "pxe.ini"
        self.log_path = self.workdir / "pxe.log"
        self.proc = None

    def write_config(self, **tftp) -> None:
        values = {"listen": ", ".join("udp:%d:interface=%s" % (self.port, i.replace(":", "\\:"))
                                      for i in self.interfaces),
                  "root": str(self.root)}
        values.update(self.tftp)
        values.update(tftp)
        body = "".join("%s = %s\n" % (k, "yes" if v is True else "no" if v is False else v)
                       for k, v in values.items())
        # Boot menus off: TFTP tests must not need (or fight over) TCP port 80.
        self.config.write_text("[global]\nlog_level = %s\n[tftp]\n%s[http]\nlisten =\n"
                               % (self.log_level, body))

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medulla_appliance.pxe", "--config", str(self.config)],
            stdout=self._log, stderr=self._log, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("medulla-pxe did not start:\n" + self.log()[-3000:])
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        if self.log_level in ("DEBUG", "INFO"):
            return self.log().count(READY_LINE) >= len(self.interfaces)
        # Quieter levels do not show the line: ask (this costs one refusal line).
        return all(probe(i if i not in ("::", "0.0.0.0") else "127.0.0.1", self.port)
                   for i in self.interfaces)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, STOP_TIMEOUT)
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class TftpdHpa:
    """Debian's in.tftpd in the foreground, ``--secure`` in ``root``, on 127.0.0.1."""

    BINARY = "/usr/sbin/in.tftpd"

    def __init__(self, root, *, port=None, extra=()):
        self.root = Path(root)
        self.port = port or free_udp_port()
        self.extra = list(extra)
        self.proc = None

    @classmethod
    def available(cls) -> bool:
        return os.access(cls.BINARY, os.X_OK)

    def start(self):
        # It drops to the tftp user inside the chroot: the root must be world-readable.
        self.root.chmod(0o755)
        self.proc = subprocess.Popen(
            [self.BINARY, "--foreground", "--listen", "--address",
             "127.0.0.1:%d" % self.port, "--secure", *self.extra, str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while not probe("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if \
                    self.proc.poll() is not None else ""
                self.stop()
                raise RuntimeError("in.tftpd did not start: %s" % err)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, STOP_TIMEOUT)
            self.proc.stderr.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
