"""Plain-text rendering of packages, deployments and their audit for ``medullactl``, and
the parsing of the times it is given. Pure functions: no I/O, the clock comes in.

Step output and hostnames come from workstations; every value goes through
:func:`render.escape_text` (directly or through :func:`render.render_table`).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from medulla_appliance.core.config import Key
from medulla_appliance.core.ini import InvalidValue, convert
from medulla_appliance.ctl.render import NONE, escape_text, format_ago, format_time, render_table
from medulla_appliance.master.logic.scheduler import FINAL, STARTED, SUCCESS, TRANSFER_FAILED

PACKAGE_COLUMNS = ("ID", "NAME", "VERSION", "OS", "FILES", "SIZE")
DEPLOYMENT_COLUMNS = ("ID", "PACKAGE", "CREATED", "STATUS", "TARGETS", "SUCCESS", "FAILED",
                      "RUNNING", "WAITING")
TARGET_COLUMNS = ("HOSTNAME", "STATE", "STEP", "ATTEMPTS", "UPDATED")
BAR_WIDTH = 10
#: ``package show`` cuts nothing shorter than this (file paths are at most 4096 bytes).
MAX_SHOWN_CHARS = 4096
OUTPUT_INDENT = "    "
_EPOCH_RE = re.compile(r"[0-9]+(\.[0-9]+)?")
_WINDOW_KEY = Key("duration", min=1)


# -- what the admin types --------------------------------------------------------------

def parse_time(text: str, tz: datetime.tzinfo | None = None) -> float:
    """Epoch seconds from ``1763892060`` or ISO 8601 (``2025-11-23T20:00``, local time in
    *tz*, the system's when None, unless the text gives an offset); ValueError otherwise."""
    text = text.strip()
    if _EPOCH_RE.fullmatch(text):
        return float(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid time {text!r}: expected ISO 8601 local time such as "
                         "2025-11-23T20:00, or epoch seconds") from None
    if when.tzinfo is None and tz is not None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()


def parse_window(text: str) -> float:
    """Seconds from a duration written as in the .ini files (``90m``, ``2h``, ``1d``)."""
    try:
        return convert(_WINDOW_KEY, text.strip())
    except InvalidValue as e:
        raise ValueError(f"invalid window: {e}") from None


# -- counting targets ------------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    """A deployment's targets counted: *done* are final (success or failure)."""

    total: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    succeeded: int = 0

    @property
    def waiting(self) -> int:
        return self.total - self.done - self.running

    @property
    def settled(self) -> bool:
        """Every target is in a final state: nothing more will happen."""
        return self.done == self.total


def tally_states(states: dict[str, int]) -> Tally:
    """Count a ``{state: count}`` mapping (``GET /api/v1/deployments``)."""
    counts = {state: n for state, n in states.items() if isinstance(n, int)}
    done = sum(n for state, n in counts.items() if state in FINAL)
    return Tally(total=sum(counts.values()), done=done,
                 running=counts.get(STARTED, 0), succeeded=counts.get(SUCCESS, 0),
                 failed=done - counts.get(SUCCESS, 0))


def tally_targets(deployment: dict, now: float) -> Tally:
    """Count the targets of a deployment's details. A transfer failure the scheduler will
    retry (retries left, window open, not stopped) is waiting, not done."""
    states = {}
    for target in deployment.get("targets") or []:
        state = target.get("state")
        if state == TRANSFER_FAILED and _will_retry(deployment, target, now):
            state = "RETRY PENDING"
        states[state] = states.get(state, 0) + 1
    return tally_states(states)


def _will_retry(deployment: dict, target: dict, now: float) -> bool:
    attempts, retries = target.get("attempts"), deployment.get("retries")
    end = deployment.get("end_at")
    if not all(isinstance(v, (int, float)) for v in (attempts, retries, end)):
        return False
    return not deployment.get("stopped") and attempts <= retries and now < end


def render_progress(tally: Tally, width: int = BAR_WIDTH) -> str:
    """``[#####-----] 12/20 done, 3 running, 1 failed``."""
    filled = width if tally.settled else (tally.done * width // tally.total if tally.total
                                          else 0)
    return (f"[{'#' * filled}{'-' * (width - filled)}] {tally.done}/{tally.total} done, "
            f"{tally.running} running, {tally.failed} failed")


# -- packages --------------------------------------------------------------------------

def format_size(size: Any) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``12.0 MiB``, ``3.2 GiB``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _join(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return ", ".join(escape_text(v) for v in values) or NONE
    return escape_text(values) if values not in (None, "") else NONE


def render_packages(packages: Sequence[dict]) -> str:
    """``medullactl package list``: one row per package, then the count."""
    rows = []
    for p in sorted(packages, key=lambda p: str(p.get("id", ""))):
        if p.get("error"):
            rows.append((p.get("id"), f"(unusable: {p['error']})", None, None, None, None))
        else:
            rows.append((p.get("id"), p.get("name"), p.get("version"), _join(p.get("os")),
                         p.get("files"), format_size(p.get("size"))))
    count = f"{len(rows)} package" + ("" if len(rows) == 1 else "s")
    return (render_table(PACKAGE_COLUMNS, rows) + "\n" + count) if rows else count


def render_package(descriptor: dict) -> str:
    """``medullactl package show``: fields, FILES, then each sequence's steps."""
    files = [f for f in descriptor.get("files") or [] if isinstance(f, dict)]
    sizes = [f.get("size") for f in files if isinstance(f.get("size"), int)]
    pairs = [("id", escape_text(descriptor.get("id", "?"))),
             ("name", _join(descriptor.get("name"))),
             ("version", _join(descriptor.get("version"))),
             ("os", _join(descriptor.get("os"))),
             ("files", f"{len(files)}, {format_size(sum(sizes))}")]
    if descriptor.get("description"):
        pairs.append(("description", escape_text(descriptor["description"])))
    lines = [f"{label + ':':<13}{text}" for label, text in pairs]
    if files:
        # Whole paths and hashes: an admin compares them with what they built.
        lines += ["", "FILES", render_table(("PATH", "SIZE", "SHA256"), [
            (f.get("path"), format_size(f.get("size")), f.get("sha256")) for f in files],
            limit=MAX_SHOWN_CHARS)]
    rows = []
    sequences = descriptor.get("sequences")
    for os_name, by_name in (sequences.items() if isinstance(sequences, dict) else ()):
        for name, steps in (by_name.items() if isinstance(by_name, dict) else ()):
            for number, step in enumerate(s for s in steps if isinstance(s, dict)):
                rows.append((f"{os_name}/{name}", number + 1,
                             step.get("label"), step.get("type"),
                             step.get("on_error") if step.get("type") in ("script", "command")
                             else None))
    if rows:
        lines += ["", "SEQUENCES",
                  render_table(("SEQUENCE", "#", "LABEL", "TYPE", "ON ERROR"), rows)]
    return "\n".join(lines)


def render_package_added(summary: dict, replaced: bool) -> str:
    """What ``package add`` / ``package import`` did, what the import could not keep,
    and what comes next."""
    package_id = escape_text(summary.get("id", "?"))
    files = summary.get("files", "?")
    lines = [f"package {package_id} ({_join(summary.get('name'))} "
             f"{_join(summary.get('version'))}) {'replaced' if replaced else 'added'}: "
             f"{escape_text(files)} file{'' if files == 1 else 's'}, "
             f"{format_size(summary.get('size'))}"]
    lines += [f"warning: {escape_text(w)}" for w in summary.get("warnings") or []]
    lines.append(f"deploy it with: medullactl deploy {package_id} TARGET...")
    return "\n".join(lines)


# -- deployments -----------------------------------------------------------------------

def _status(dep: dict, tally: Tally, now: float) -> str:
    if tally.settled:
        return "done"
    if dep.get("stopped"):
        return "stopping"
    start = dep.get("start_at")
    if isinstance(start, (int, float)) and start > now and not tally.running:
        return "scheduled"
    return "running"


def _package(dep: dict) -> str:
    return dep.get("package_id") or dep.get("package_name") or NONE


def render_deployments(deployments: Sequence[dict], now: float,
                       tz: datetime.tzinfo | None = None) -> str:
    """``medullactl audit``: the newest deployments and their targets by outcome."""
    rows = []
    for dep in deployments:
        states = dep.get("states") if isinstance(dep.get("states"), dict) else {}
        t = tally_states(states)
        rows.append((dep.get("id"), _package(dep), format_time(dep.get("created_at"), tz),
                     _status(dep, t, now), t.total, t.succeeded, t.failed, t.running,
                     t.waiting))
    count = f"{len(rows)} deployment" + ("" if len(rows) == 1 else "s")
    return (render_table(DEPLOYMENT_COLUMNS, rows) + "\n" + count) if rows else count


def _window(dep: dict, tz) -> str:
    start = "now" if dep.get("start_at") is None else format_time(dep.get("start_at"), tz)
    return f"{start} to {format_time(dep.get('end_at'), tz)}"


def render_deployment(dep: dict, now: float, tz: datetime.tzinfo | None = None) -> str:
    """``medullactl audit ID``: the deployment, a table of its targets, its progress."""
    retries = dep.get("retries")
    pairs = [
        ("deployment", escape_text(dep.get("id", "?"))),
        ("package", f"{escape_text(_package(dep))} ({_join(dep.get('package_name'))} "
                    f"{_join(dep.get('package_version'))}), sequence "
                    f"{_join(dep.get('sequence'))}"),
        ("created", format_time(dep.get("created_at"), tz)),
        ("window", _window(dep, tz)),
        ("limits", f"{_join(dep.get('max_per_relay'))} at once per relay, "
                   f"{_join(retries)} {'retry' if retries == 1 else 'retries'}")]
    tally = tally_targets(dep, now)
    pairs.append(("status", _status(dep, tally, now)))
    lines = [f"{label + ':':<12}{text}" for label, text in pairs]
    targets = [t for t in dep.get("targets") or [] if isinstance(t, dict)]
    lines.append("")
    if targets:
        lines.append(render_table(TARGET_COLUMNS, [
            (t.get("hostname") or t.get("uuid"), t.get("state"), t.get("step"),
             t.get("attempts"), format_ago(t.get("updated_at"), now, tz)) for t in targets]))
    lines.append(render_progress(tally))
    return "\n".join(lines)


def format_timestamp(ts: Any, tz: datetime.tzinfo | None = None) -> str:
    """Epoch seconds as ``2025-11-23 10:01:05`` (audit lines need the seconds)."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return NONE if ts in (None, "") else "?"
    try:
        return datetime.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "?"


def output_lines(output: Any) -> Iterable[str]:
    """A step's output, one escaped, indented line per line it printed."""
    if output in (None, ""):
        return []
    text = output if isinstance(output, str) else str(output)
    return [OUTPUT_INDENT + escape_text(line.expandtabs(8).rstrip())
            for line in text.splitlines()]


def render_audit(audit: dict, tz: datetime.tzinfo | None = None) -> str:
    """``medullactl audit ID MACHINE``: each state change and step, its output indented."""
    lines = [f"{escape_text(audit.get('hostname') or '?')} ({escape_text(audit.get('uuid'))}) "
             f"in {escape_text(audit.get('deployment'))}: {escape_text(audit.get('state'))}"]
    entries = [e for e in audit.get("audit") or [] if isinstance(e, dict)]
    if entries:
        lines.append("")
    for entry in entries:
        head = f"{format_timestamp(entry.get('ts'), tz)}  {escape_text(entry.get('kind')):<5}  " \
               f"{escape_text(entry.get('label'))}"
        if entry.get("kind") == "step":
            ok = entry.get("ok")
            head += "  " + ("ok" if ok else "FAILED" if ok is not None else "?")
            if isinstance(entry.get("ret"), int) and not isinstance(entry.get("ret"), bool):
                head += f"  ret={entry['ret']}"
        lines.append(head)
        lines.extend(output_lines(entry.get("output")))
    if not entries:
        lines.append("(nothing recorded yet)")
    return "\n".join(lines)


def render_created(dep: dict, tz: datetime.tzinfo | None = None) -> str:
    """What ``medullactl deploy`` created, and the command to follow it."""
    dep_id = escape_text(dep.get("id", "?"))
    count = dep.get("target_count")
    machines = f" to {count} machine{'' if count == 1 else 's'}" if isinstance(count, int) \
        else ""
    return (f"deployment {dep_id} created: package {escape_text(_package(dep))}{machines}, "
            f"from {_window(dep, tz)}\n"
            f"follow it with: medullactl audit {dep_id} --follow")


def render_stopped(result: dict) -> str:
    dep_id = escape_text(result.get("id", "?"))
    return (f"deployment {dep_id} stopped: machines still waiting will not start it, "
            f"those running it are told to stop\n"
            f"restart it with: medullactl deploy restart {dep_id}")


def render_restarted(result: dict) -> str:
    count = result.get("restarted")
    return (f"deployment {escape_text(result.get('id', '?'))} restarted: {escape_text(count)} "
            f"machine{'' if count == 1 else 's'} start over (those that succeeded or are "
            "running keep their state)")
