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
# The relay-role daemons a master host runs beside the master (and Syncthing itself).
ROLE_UNITS = ("medulla-relay", "medulla-pxe", "medulla-guard", "medulla-syncthing-engine",
              "medulla-syncthing")
DAEMONS = ("medulla-master", "medulla-relay", "medulla-pxe", "medulla-guard",
           "medulla-syncthing")
# How each daemon's status line says its link to the master is up.
LINK_UP = ("master link up", "master connected", "XMPP connected")
# A TFTP read request for one small file, from inside the container (one DATA block).
TFTP_GET = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.settimeout(5); s.sendto(b'\\0\\1' + sys.argv[1].encode() + b'\\0octet\\0', "
    "('127.0.0.1', 69)); d, a = s.recvfrom(70000); assert d[:4] == b'\\0\\3\\0\\1', d; "
    "s.sendto(b'\\0\\4\\0\\1', a); sys.stdout.write(d[4:].decode())")
HTTP_STATUS = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
    "except urllib.error.HTTPError as e:\n    print(e.code)")


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
                 # medulla-guard's nft acts on the test's network namespace.
                 "--capability=CAP_NET_ADMIN",
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
    _check_roles(c)
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
    # An upgrade (dpkg configures the packages again) restarts every daemon.
    before = {u: c.main_pid(u) for u in (*DAEMONS, "medulla-agent")}
    c.sh(f"dpkg -i {DEBS_INBOX}/*.deb", timeout=300)
    for unit, old in before.items():
        c.wait_for(f"systemctl is-active {unit}", lambda s: s == "active", 60)
        assert c.main_pid(unit) not in (0, old), f"{unit} was not restarted by the upgrade"
    failed = c.sh("systemctl list-units --failed --plain --no-legend 'medulla-*'").stdout
    assert failed.strip() == "", failed



def _check_roles(c: Container) -> None:
    """The relay role beside the master: each daemon started at boot, active (READY=1),
    doing its job, and reloaded in place."""
    for unit in ROLE_UNITS:
        c.wait_for(f"systemctl is-active {unit}", lambda s: s == "active", 120)
    # medulla-pxe answers TFTP on 69 (CAP_NET_BIND_SERVICE) from the TFTP root.
    c.sh("echo 'boot file of the nspawn test' > /var/lib/medulla/tftpboot/nspawn.txt")
    got = c.sh(f'python3.11 -I -c "{TFTP_GET}" nspawn.txt').stdout
    assert got == "boot file of the nspawn test\n", got
    # medulla-guard made its nftables table (CAP_NET_ADMIN, ambient for nft).
    c.wait_for("nft list table inet medulla_guard >/dev/null && echo ok", lambda s: s == "ok", 30)
    # medulla-relay serves: a download without a token is refused with 401.
    status = c.sh(f"python3.11 -I -c '{HTTP_STATUS}' "
                  "http://127.0.0.1:9990/packages/p/descriptor.json").stdout.strip()
    assert status == "401", status
    # medulla-syncthing configured Syncthing (found through config.xml): the folder is there.
    c.wait_for("grep -c 'id=\"medulla-packages\"' /var/lib/medulla/syncthing/config.xml",
               lambda s: s not in ("", "0"), 60)
    # On the master host the roles with an [xmpp] jid log in as the master's account with
    # their own resource: each says its link is up in its status line.
    for unit in DAEMONS[1:]:
        local = unit.removeprefix("medulla-")
        if c.sh(f"grep -qs '^jid = master@' /etc/medulla/{local}.ini.local", check=False) \
                .returncode == 0:
            c.wait_for(f"systemctl show -p StatusText --value {unit}",
                       lambda s: any(up in s for up in LINK_UP), 60)
    for unit in DAEMONS[1:]:
        pid = c.main_pid(unit)
        c.sh(f"systemctl reload {unit}")
        assert c.sh(f"systemctl is-active {unit}").stdout.strip() == "active", unit
        assert c.main_pid(unit) == pid, f"{unit}: reload replaced the process"
