"""medulla-guard against fail2ban (Debian 12's 1.0.2), in one invocation.

guard.scan: ``scripts/gen-authlog`` writes a 1,000,000-line Debian 12 auth.log with a
known mix of sshd failures (every kind the seeds count, IPv4 and IPv6, crafted user
names) and noise. ``fail2ban-regex -o ip LOG "sshd[publickey=any]"`` (fail2ban's sshd
filter counting refused keys, as the seeds do) and ``python -m
medulla_appliance.guard.scan etc/guard.d/filters/sshd.ini LOG`` (the daemon's own
reading and matching code) each read the whole file, alternating, ``--runs`` times.
Lines per second are lines / CPU seconds of each process (user + system, start-up
included; both are single-threaded): these machines are shared, and wall time measures
the neighbours as much as the tool (wall figures are in params). Matches are compared
address by address, between the two tools and with the generator's expectation.

guard.ban_latency: medulla-guard with its nftables backend in a network namespace of its
own follows a log file; for each of ``--trials`` fresh addresses 4 failures are written,
then the 5th, and the time from that write to the element appearing in the kernel's set
(``nft monitor`` in the namespace) is measured. Needs root; skipped otherwise.
"""

import argparse
import collections
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

NAME = "guard"
ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "etc" / "guard.d" / "filters" / "sshd.ini"
SCAN_TARGET_RATIO = 10.0
LATENCY_TARGET_MS = 100.0


def log(text):
    sys.stderr.write("bench guard: %s\n" % text)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1000000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (median)")
    parser.add_argument("--trials", type=int, default=30, help="bans timed for latency")
    parser.add_argument("--workdir", help="keep files here (default: a temp folder)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    return parser.parse_args(argv)


def timed(argv, stdout):
    """(wall seconds, CPU seconds of the child) of one run; raises if it fails."""
    before = os.times()
    started = time.monotonic()
    with open(stdout, "wb") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
    wall = time.monotonic() - started
    after = os.times()
    if result.returncode:
        raise RuntimeError("%s failed: %s" % (argv[0], result.stderr.decode()[-2000:]))
    cpu = (after.children_user - before.children_user) + \
        (after.children_system - before.children_system)
    return wall, cpu


def scan_rows(args, work):
    logfile, expect = work / "auth.log", work / "expected.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-authlog"), "--lines",
                    str(args.lines), "--out", str(logfile), "--expect", str(expect)],
                   check=True, cwd=ROOT)
    lines = sum(1 for _ in open(logfile, "rb"))
    expected = json.loads(expect.read_text())
    fail2ban = ["fail2ban-regex", "-o", "ip", str(logfile), "sshd[publickey=any]"]
    ours = [sys.executable, "-m", "medulla_appliance.guard.scan", "--json", str(FILTER),
            str(logfile)]
    runs = {"fail2ban": [], "ours": []}
    for run in range(args.runs):
        for side, argv in (("fail2ban", fail2ban), ("ours", ours)):
            wall, cpu = timed(argv, work / ("%s.out" % side))
            runs[side].append((wall, cpu))
            log("run %d %s: %.2f s wall, %.2f s CPU" % (run, side, wall, cpu))
    theirs = collections.Counter(
        line.strip() for line in open(work / "fail2ban.out") if line.strip())
    mine = collections.Counter(json.loads((work / "ours.out").read_text()))
    differ = sorted(a for a in set(theirs) | set(mine) if theirs[a] != mine[a])
    off_expected = sorted(a for a in set(expected) | set(mine)
                          if expected.get(a, 0) != mine[a])
    cpu = {side: h.median([c for _, c in values]) for side, values in runs.items()}
    wall = {side: h.median([w for w, _ in values]) for side, values in runs.items()}
    ours_rate, their_rate = lines / cpu["ours"], lines / cpu["fail2ban"]
    params = {"lines": lines, "runs": args.runs, "measure": "lines per CPU second",
              "failures_ours": sum(mine.values()), "failures_fail2ban": sum(theirs.values()),
              "addresses": len(mine), "identical_per_address": not differ,
              "addresses_differing": len(differ), "ours_vs_expected_differing": len(off_expected),
              "wall_s": {k: round(v, 2) for k, v in wall.items()},
              "wall_lines_per_s": {k: round(lines / v) for k, v in wall.items()},
              "fail2ban_filter": "sshd[publickey=any]"}
    if differ:
        log("addresses counted differently: %s" % differ[:10])
    return [h.row("guard.scan", "lines/s", round(ours_rate), "fail2ban", round(their_rate),
                  round(ours_rate / their_rate, 2), SCAN_TARGET_RATIO, True, params)]


# -- ban latency -------------------------------------------------------------------------

class Monitor:
    """``nft monitor`` in a namespace; each line with the time it was read."""

    def __init__(self, ns):
        self.lines = queue.Queue()
        self.process = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor"],
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line))

    def wait_for(self, *words, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                when, line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if all(w in line for w in words):
                return when

    def stop(self):
        h.stop_process(self.process, timeout=5)


def latency_rows(args, work):
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft")):
        log("ban latency skipped: needs root, ip and nft")
        return []
    ns = "mgbench%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    guard = monitor = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rules = work / "rules"
        (rules / "jails").mkdir(parents=True, exist_ok=True)
        (rules / "filters").mkdir(exist_ok=True)
        shutil.copy(FILTER, rules / "filters" / "sshd.ini")
        authlog = work / "live-auth.log"
        authlog.write_text("")
        (rules / "jails" / "sshd.ini").write_text(
            "[jail]\nsources = file:%s\nmaxretry = 5\nfindtime = 10m\nbantime = 10m\n" % authlog)
        ini = work / "guard.ini"
        socket_path = work / "run" / "control.sock"
        ini.write_text("[guard]\nbackend = nftables\nrules_dir = %s\nstate_dir = %s\n"
                       "control_socket = %s\n" % (rules, work / "state", socket_path))
        with open(work / "guard.log", "wb") as out:
            guard = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                      "medulla_appliance.guard", "--config", str(ini)],
                                     stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        from medulla_appliance.guard import control
        deadline = time.monotonic() + 30
        while True:
            try:
                control.status(socket_path=str(socket_path), timeout=2)
                break
            except control.ControlClientError:
                if time.monotonic() > deadline or guard.poll() is not None:
                    raise RuntimeError("medulla-guard did not start: %s" % (
                        (work / "guard.log").read_text()[-2000:])) from None
                time.sleep(0.05)
        monitor = Monitor(ns)
        time.sleep(0.5)
        line = "%s relay sshd[%d]: Failed password for root from %s port 4242 ssh2\n"
        samples, missed = [], 0
        for trial in range(args.trials):
            address = "198.51.%d.%d" % (100 + trial // 250, 1 + trial % 250)
            with open(authlog, "a") as f:
                f.write("".join(line % ("2024-11-23T10:00:00+00:00", trial, address)
                                for _ in range(4)))
            time.sleep(0.3)  # the 4 are read; only the 5th is timed
            with open(authlog, "a") as f:
                started = time.monotonic()
                f.write(line % ("2024-11-23T10:00:01+00:00", trial, address))
                f.flush()
            seen = monitor.wait_for(address, "timeout")
            if seen is None:
                missed += 1
            else:
                samples.append((seen - started) * 1000)
            time.sleep(0.1)
        log("ban latency ms: %s" % [round(s, 1) for s in samples])
    finally:
        if monitor is not None:
            monitor.stop()
        if guard is not None:
            h.stop_process(guard, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    median = h.median(samples)
    if median is None:
        raise RuntimeError("no ban seen in nftables; see %s" % (work / "guard.log"))
    params = {"trials": args.trials, "missed": missed,
              "p95_ms": round(h.percentile(samples, 95), 1),
              "max_ms": round(max(samples), 1), "min_ms": round(min(samples), 1),
              "path": "log write -> inotify -> filter -> jail -> nft set element"}
    return [h.row("guard.ban_latency", "ms", round(median, 1), "target", LATENCY_TARGET_MS,
                  round(LATENCY_TARGET_MS / max(median, 1e-3), 2), LATENCY_TARGET_MS, False,
                  params)]


def main(argv=None):
    args = parse_args(argv)
    if shutil.which("fail2ban-regex") is None:
        log("fail2ban-regex missing: run scripts/install-deps")
        return 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medulla-bench-guard-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = scan_rows(args, work) + latency_rows(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for item in rows:
        log(json.dumps(item))
    if not args.no_write:
        log("wrote %s" % h.write_results(NAME, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
