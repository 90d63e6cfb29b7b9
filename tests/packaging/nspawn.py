"""Boot the test chroot with `systemd-nspawn --boot` and check the units under a real
systemd: started at boot and by `systemctl start`, active (= READY=1 received), connected,
an agent enrolled, reload, and restarted by a package upgrade.

The container runs in the test's own network namespace (loopback and a veth pair, nothing
of the host's) and is not registered with machined (the host may not run systemd);
commands enter it with nsenter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from medulla_appliance.testing.processes import process_tree

from .chroot import DEBS_INBOX, run

BOOT_TIMEOUT = 90


def unavailable() -> str | None:
    """Why nspawn cannot be tried here, or None."""
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (package systemd-container)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    return None


class Container:
    def __init__(self, root: Path, log: Path, netns: str):
        self.root = root
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--directory", str(root), "--boot",
                 "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{netns}",
                 "--console=passive",
                 f"--machine=medulla-pkgtest-{os.getpid()}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.leader = self._find_leader()

    def _find_leader(self) -> int:
        """The container's PID 1 (systemd), seen from the host."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("systemd-nspawn exited %s: %s" % (
                    self.proc.returncode, self.log.read_text(errors="replace")[-2000:]))
            for pid in process_tree(self.proc.pid)[1:]:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "systemd":
                    return pid
            time.sleep(0.2)
        raise RuntimeError("no systemd inside the container after 30 s")

    def sh(self, command: str, *, check=True, timeout=120) -> subprocess.CompletedProcess:
        proc = run(["nsenter", "--target", str(self.leader), "--all", "--root", "--wd", "--",
                    "/bin/sh", "-c", command], check=False, timeout=timeout,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                        "DEBIAN_FRONTEND": "noninteractive"})
        if check and proc.returncode != 0:
            journal = self.sh("journalctl --no-pager -n 40", check=False).stdout
            raise AssertionError(f"in the container: {command!r} exited {proc.returncode}\n"
                                 f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}\n"
                                 f"--- journal\n{journal[-5000:]}")
        return proc

    def wait_for(self, command: str, expected, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.sh(command, check=False).stdout.strip()
            if expected(out):
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} still gives {out!r} after {timeout}s\n"
                                     + self.sh("systemctl --no-pager status 'medulla-*' ; "
                                               "journalctl --no-pager -n 60", check=False)
                                     .stdout[-5000:])
            time.sleep(0.5)

    def main_pid(self, unit: str) -> int:
        return int(self.sh(f"systemctl show -p MainPID --value {unit}").stdout.strip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.sh("systemctl poweroff", check=False, timeout=20)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in reversed(process_tree(self.proc.pid)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(timeout=10)


def check_booted_system(box, domain: str, netns: str) -> None:
    """Boot the chroot (mounts off, services allowed), run the checks, shut it down."""
    box.umount()
    box.deny_services(False)
    log = box.root.parent / "nspawn.log"
    hosts = box.path("/etc/hosts")
    original_hosts = hosts.read_text() if hosts.exists() else ""
    # The workstation finds its server by name, as it would through DNS.
    hosts.write_text(original_hosts + f"\n127.0.0.1 {domain}\n")
    container = None
    try:
        try:
            container = Container(box.root, log, netns)
        except RuntimeError as exc:
            import pytest
            pytest.skip(f"systemd-nspawn --boot does not boot here: {exc}")
        _checks(container, domain)
    finally:
        if container is not None:
            container.stop()
        hosts.write_text(original_hosts)
        box.deny_services(True)
        box.mount()


def _checks(c: Container, domain: str) -> None:
    state = c.wait_for("systemctl is-system-running --wait", lambda s: s in ("running",
                       "degraded"), BOOT_TIMEOUT)
    if state == "degraded":
        print(c.sh("systemctl --failed --no-pager", check=False).stdout)
    # Enabled by the packages: started at boot. Type=notify: "active" means READY=1 came.
    for unit in ("prosody", "medulla-master"):
        c.wait_for(f"systemctl is-active {unit}", lambda s: s == "active", 60)
    c.sh("systemctl restart medulla-master")
    assert c.sh("systemctl is-active medulla-master").stdout.strip() == "active"
    c.wait_for("systemctl show -p StatusText --value medulla-master",
               lambda s: s.startswith("XMPP connected"), 60)
    # Unconfigured agent: skipped by its Condition, not failed.
    assert c.sh("systemctl is-active medulla-agent", check=False).stdout.strip() == "inactive"
    # A workstation set up as README says: the master's agent settings and CA.
    c.sh("cp /etc/medulla/agents/agentconf.ini.local /etc/medulla-agent/ && "
         "cp /etc/medulla/pki/ca.pem /etc/medulla-agent/ca.pem && "
         "systemctl start medulla-agent")
    c.wait_for("systemctl is-active medulla-agent", lambda s: s == "active", 60)

    def one_online(out):
        try:
            machines = json.loads(out)
        except ValueError:
            return False
        rows = machines if isinstance(machines, list) else machines.get("machines", [])
        return any(row.get("online") for row in rows)
    c.wait_for("medullactl --json machines", one_online, 60)
    # Reload: RELOADING=1 then READY=1; the unit stays active with the same process.
    pid = c.main_pid("medulla-master")
    c.sh("systemctl reload medulla-master")
    assert c.sh("systemctl is-active medulla-master").stdout.strip() == "active"
    assert c.main_pid("medulla-master") == pid
    # An upgrade (dpkg configures the packages again) restarts both daemons.
    before = {u: c.main_pid(u) for u in ("medulla-master", "medulla-agent")}
    c.sh(f"dpkg -i {DEBS_INBOX}/*.deb", timeout=300)
    for unit, old in before.items():
        c.wait_for(f"systemctl is-active {unit}", lambda s: s == "active", 60)
        assert c.main_pid(unit) not in (0, old), f"{unit} was not restarted by the upgrade"

