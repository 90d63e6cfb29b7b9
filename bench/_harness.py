"""What the benchmark scripts share: result rows, percentiles, /proc readings, and swarm
processes whose JSON lines are followed through a file (a pipe could fill up and stall
them)."""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medulla_appliance.testing.appliance import SWARM_MODULE, stop_process
from medulla_appliance.testing.processes import raise_nofile

RESULTS = Path(__file__).resolve().parent / "results"
MACHINE = "%d cores" % os.cpu_count()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def row(metric, unit, ours, anchor, anchor_value, ratio, target, higher_is_better, params):
    """One result row, as CONVENTIONS.md "Benchmarks" defines it."""
    return {"metric": metric, "unit": unit, "ours": ours, "anchor": anchor,
            "anchor_value": anchor_value, "ratio": ratio, "target": target,
            "higher_is_better": higher_is_better, "params": params,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": MACHINE}


def write_results(name, rows):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("%s.json" % name)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def percentile(values, p):
    """Nearest-rank percentile of `values` (p in 0..100); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values):
    values = [v for v in values if v is not None]
    return percentile(values, 50) if values else None


def cpu_seconds(pid):
    """User + system CPU seconds used so far by process `pid` (0 if it is gone)."""
    try:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def rss_kib(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


class CpuMeter:
    """CPU seconds each named process used between start() and stop(), and machine load."""

    def __init__(self, pids):
        self.pids = pids  # name -> pid, or name -> callable returning a list of pids

    def _read(self):
        return {name: sum(cpu_seconds(p) for p in (pids() if callable(pids) else [pids]))
                for name, pids in self.pids.items()}

    def start(self):
        self._before, self._busy, self._t = self._read(), machine_busy(), time.monotonic()
        return self

    def stop(self):
        after, busy = self._read(), machine_busy()
        wall = time.monotonic() - self._t
        used = {k: round(after[k] - self._before[k], 2) for k in after}
        load = (busy[0] - self._busy[0]) / max(1, busy[1] - self._busy[1])
        # CPU the machine spent on anything else (other users' jobs skew the figures).
        others = (busy[0] - self._busy[0]) / CLOCK_TICKS - sum(used.values())
        return {"wall_s": round(wall, 2), "cpu_s": {**used, "others": round(max(0, others), 2)},
                "machine_busy_pct": round(100 * load, 1)}


def wait_quiet(pids, *, below=0.10, window=0.5, timeout=30.0):
    """Wait until the processes together use less than `below` of a core over `window`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        if sum(cpu_seconds(p) for p in pids) - before < below * window:
            return True
    return False


class EventFile:
    """The JSON lines a swarm wrote to `path` so far, read incrementally."""

    def __init__(self, path):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.records = []

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            try:
                new.append(json.loads(line))
            except ValueError:
                continue  # not ours (a stray line); the swarm's own lines are JSON
        self.records.extend(new)
        return new


class Swarm:
    """A `medulla_appliance.testing.swarm` process: agents first..first+count-1."""

    def __init__(self, config, count, first, out, *, prefix, options=()):
        self.count, self.first = count, first
        self.events = EventFile(out)
        with open(out, "wb") as stdout, open(str(out) + ".err", "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", SWARM_MODULE, "--config", str(config),
                 "--count", str(count), "--first", str(first), "--prefix", prefix,
                 "--events", *options],
                stdout=stdout, stderr=stderr, preexec_fn=raise_nofile, start_new_session=True)

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.poll() is None

    def signal(self, signum=signal.SIGUSR1):
        self.process.send_signal(signum)

    def stop(self):
        stop_process(self.process, timeout=30)


def start_swarms(config, total, procs, workdir, tag, *, prefix, options=()):
    """`total` agents split over `procs` swarm processes."""
    swarms, first = [], 0
    for k in range(procs):
        count = total // procs + (1 if k < total % procs else 0)
        swarms.append(Swarm(config, count, first, Path(workdir) / ("%s-%d.jsonl" % (tag, k)),
                            prefix=prefix, options=options))
        first += count
    return swarms


def wait_events(swarms, event, want, timeout, *, on_tick=None, interval=0.2):
    """Poll the swarms until `want` distinct agents reported `event`, or timeout.

    Returns {agent index: first wall-clock time of `event`}.
    """
    seen = {}
    deadline = time.monotonic() + timeout
    while True:
        for swarm in swarms:
            for record in swarm.events.poll():
                if record.get("event") == event and record["i"] not in seen:
                    seen[record["i"]] = record["t"]
        if len(seen) >= want or time.monotonic() >= deadline:
            return seen
        if not all(s.alive() for s in swarms):
            raise RuntimeError("a swarm process died: %s" % [
                (s.pid, s.process.returncode) for s in swarms if not s.alive()])
        if on_tick is not None:
            on_tick(len(seen))
        time.sleep(interval)


def all_records(swarms, event):
    for swarm in swarms:
        swarm.events.poll()
        yield from (r for r in swarm.events.records if r.get("event") == event)
