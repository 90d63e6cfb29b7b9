"""`make demo` keeps working: scripts/demo.py run as a process, the way `make demo` runs
it (the venv's python; here in a folder of its own so a kept demo of the user's is left
alone). It must exit 0 having shown each section's result: the agent enrolled and online,
DEPLOYMENT SUCCESS of a deployment to a saved group, an unknown PXE machine's menu,
registration and "not imaged yet", five failed SSH logins banned locally and in the fleet
view, everything stopped; and nothing it started may be left. With --keep everything it
started runs, listening on 127.0.0.1 only and usable as printed, until --stop stops it."""

import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medulla_appliance.testing.processes import process_tree, read_stat

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.py"
DAEMONS = {"prosody", "medulla-master", "medulla-agent", "medulla-relay", "medulla-pxe",
           "medulla-guard"}
PID_LINE = re.compile(r"^(prosody|medulla-[a-z]+) pid (\d+)\b", re.M)
TIMEOUT_S = 120  # the demo takes ~6 s here; this only bounds a hung one


def run_demo(workdir, *args):
    """Run the demo to its end; returns (exit code, output, {name: (pid, start time)}).

    The output is read as it comes so that each daemon's start time is taken while it
    surely runs: a PID the kernel gave to another process since is not taken for it."""
    process = subprocess.Popen(
        [sys.executable, str(DEMO), "--workdir", str(workdir), *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(TIMEOUT_S, process.kill)
    watchdog.start()
    started, lines = {}, []
    try:
        for line in process.stdout:
            lines.append(line)
            for name, pid in PID_LINE.findall(line):
                started[name] = (int(pid), start_time(int(pid)))
        code = process.wait()
    finally:
        watchdog.cancel()
    return code, "".join(lines), started


def start_time(pid):
    stat = read_stat(pid)
    return stat[2] if stat is not None and stat[0] != "Z" else None


def left_running(started):
    """The (name, pid) of each daemon still running as the same process."""
    return [(name, pid) for name, (pid, start) in started.items()
            if start is not None and start_time(pid) == start]


def processes_using(folder):
    """PIDs of processes whose command line names ``folder`` (config files are there)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if str(folder).encode() in cmdline:
            found.append(int(entry))
    return found


def section(output, title):
    """The text of the section whose `== ` line starts with ``title``."""
    parts = re.split(r"^== ", output, flags=re.M)
    matches = [part for part in parts if part.startswith(title)]
    assert matches, "no section %r in:\n%s" % (title, output)
    return matches[0]


def stop_leftovers(workdir):
    """What a failed or timed-out run left, stopped the demo's own way (its pids.json)."""
    if (workdir / "pids.json").exists():
        subprocess.run([sys.executable, str(DEMO), "--workdir", str(workdir), "--stop"],
                       cwd=ROOT, capture_output=True, timeout=60)


def test_demo_shows_every_section_and_leaves_nothing_running(tmp_path):
    work = tmp_path / "demo"
    try:
        code, out, started = run_demo(work)
    finally:
        stop_leftovers(work)
    assert code == 0, out
    assert "Traceback" not in out

    assert re.search(r"^medulla-agent pid \d+ enrolled and online after",
                     section(out, "medulla-agent for this machine"), re.M), out
    admin = section(out, "What the admin sees")
    assert re.search(r"^\S+\s+online\s+just now\s", admin, re.M), admin
    assert "1 machine, 1 online" in admin

    deploy = section(out, "A package, deployed to a saved group")
    assert "$ medullactl group create demo " in deploy
    assert re.search(r"^group demo created: 1 machine$", deploy, re.M), deploy
    assert "$ medullactl deploy native-hello group:demo\n" in deploy
    assert re.search(r"^\S+\s+DEPLOYMENT SUCCESS\s+check\s+1\s", deploy, re.M), deploy
    assert re.search(r"^\S+ \(m-[0-9a-f]+\) in dep-\S+: DEPLOYMENT SUCCESS$", deploy, re.M)
    assert "Hello from a native package." in deploy

    pxe = section(out, "medulla-pxe: an unknown machine")
    assert "chain --autofree http://127.0.0.1:" in pxe  # autoexec.ipxe over TFTP
    assert "# medulla-pxe: menu registration for 52:54:00:de:00:07 (registration)" in pxe
    assert "item i1 Register this machine" in pxe
    assert "registered with Medulla as pc-525400de0007" in pxe
    assert re.search(r"^pc-525400de0007\s+not imaged yet\s+never\s", pxe, re.M), pxe

    guard = section(out, "medulla-guard: five failed SSH logins")
    failures = re.findall(r"^  \S+ demo sshd\[\d+\]: Failed password for root from "
                          r"203\.0\.113\.7 port \d+ ssh2$", guard, re.M)
    assert len(failures) == 5, guard
    local, fleet = guard.split("$ medullactl guard fleet\n")
    assert re.search(r"^203\.0\.113\.7\s+sshd\s+5\s", local, re.M), guard
    assert re.search(r"^203\.0\.113\.7\s+master\s+sshd\s+\S.*\s5$", fleet, re.M), guard

    stops = section(out, "The agent stops")
    assert re.search(r"^\S+\s+offline\s", stops, re.M) and "0 online" in stops, stops
    assert re.search(r"^pc-525400de0007\s+not imaged yet\s", stops, re.M), stops

    # Everything it started was named with its PID, said stopped, and is gone.
    assert set(started) == DAEMONS, out
    stopped = section(out, "Stopped everything the demo started, by PID: ")
    for name, (pid, _) in started.items():
        assert "%s %d" % (name, pid) in stopped, (name, stopped)
    assert left_running(started) == []
    assert processes_using(work) == []
    assert not (work / "pids.json").exists()


def listening_addresses(pids):
    """{pid: [(protocol, address, port)]} of the TCP listening and unconnected UDP
    sockets of ``pids`` and their children, from /proc/net."""
    inodes = {}
    for pid in pids:
        for process in process_tree(pid):
            for fd in os.listdir("/proc/%d/fd" % process):
                try:
                    target = os.readlink("/proc/%d/fd/%s" % (process, fd))
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
    found = {pid: [] for pid in pids}
    for protocol, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path("/proc/net", protocol).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == listening and inode in inodes:
                address, port = local.split(":")
                found[inodes[inode]].append((protocol, proc_net_address(address),
                                             int(port, 16)))
    return found


def proc_net_address(text):
    """An address as /proc/net/tcp writes it (32-bit words in host order) to text."""
    raw = b"".join(bytes.fromhex(text[i:i + 8])[::-1] for i in range(0, len(text), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def test_keep_leaves_it_running_on_loopback_until_stop(tmp_path):
    work = tmp_path / "demo"
    try:
        code, out, _ = run_demo(work, "--keep")
        assert code == 0, out
        left = section(out, "Left running (KEEP=1): ")
        state = json.loads((work / "pids.json").read_text())
        kept = {name: entry["pid"] for name, entry in state["processes"].items()}
        assert set(kept) == DAEMONS
        for name, pid in kept.items():
            assert "%s %d" % (name, pid) in left
            assert start_time(pid) == state["processes"][name]["start"], name

        # Nothing listens beyond 127.0.0.1, and the daemons that serve do listen.
        listening = listening_addresses(list(kept.values()))
        for name, pid in kept.items():
            assert {address for _, address, _ in listening[pid]} <= {"127.0.0.1"}, (
                name, listening[pid])
        serving = {name for name, pid in kept.items() if listening[pid]}
        assert serving >= {"prosody", "medulla-master", "medulla-relay", "medulla-pxe"}
        assert {p for p, _, _ in listening[kept["medulla-pxe"]]} == {"udp", "tcp"}

        # It is usable as printed, the demo gone: the guard still follows its log (the
        # printed shell loop, run as is) and medullactl, with the printed variables, sees
        # the new ban in the fleet view.
        loop = re.search(r"^guard: (for i in .*; done)$", left, re.M).group(1)
        assert "198.51.100.9" in loop
        subprocess.run(["sh", "-c", loop], check=True, timeout=10)
        env = dict(os.environ, **dict(re.findall(r"(MEDULLA_API_\w+)=(\S+)", left)))
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run([sys.executable, "-m", "medulla_appliance.ctl", "guard",
                                   "fleet"], env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
            banned = set(re.findall(r"^(\S+)\s+master\s+sshd\s", done.stdout, re.M))
            if "198.51.100.9" in banned or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert banned == {"198.51.100.9", "203.0.113.7"}, done.stdout
    finally:
        stop = subprocess.run([sys.executable, str(DEMO), "--workdir", str(work), "--stop"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    for name, pid in kept.items():
        assert "stopped %s (pid %d)" % (name, pid) in stop.stdout, stop.stdout
        assert start_time(pid) != state["processes"][name]["start"], name
    assert processes_using(work) == []
    assert not (work / "pids.json").exists()
    for folder in state["folders"]:
        assert not Path(folder).exists()
