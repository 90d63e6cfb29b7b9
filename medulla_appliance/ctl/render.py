"""Plain-text rendering for ``medullactl``: pure functions from API data to strings.

Hostnames, OS names and history details come from workstations, so every value goes
through :func:`escape_text` before it reaches the terminal: a hostile hostname cannot
clear the screen, retitle the terminal or reorder text with bidi controls.
"""

from __future__ import annotations

import datetime
import unicodedata
from typing import Any, Iterable, Sequence

#: Values longer than this are cut in tables (``show`` prints them whole).
MAX_CELL_CHARS = 60
#: Placeholder for missing or empty values.
NONE = "-"

MACHINE_COLUMNS = ("HOSTNAME", "STATE", "LAST SEEN", "IP", "OS", "AGENT", "UUID")
HISTORY_COLUMNS = ("WHEN", "EVENT", "DETAIL")
#: ``machine show`` prints these keys first, in this order, under these labels.
MACHINE_FIELDS = (
    ("hostname", "hostname"), ("uuid", "uuid"), ("online", "state"), ("jid", "jid"),
    ("macs", "macs"), ("ips", "ips"), ("os", "os"), ("agent_version", "agent version"),
    ("inventory_tag", "inventory tag"), ("relay", "relay"), ("last_seen", "last seen"),
    ("enrolled_at", "enrolled"), ("key_fingerprint", "key fingerprint"),
)


def escape_text(value: Any) -> str:
    """*value* as one line of printable text: control, format and separator characters
    (ESC, CR, LF, U+202E, ...) become visible ``\\x1b``-style escapes."""
    text = value if isinstance(value, str) else str(value)
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def display_width(text: str) -> int:
    """Terminal columns *text* takes: wide CJK counts 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def truncate(text: str, limit: int = MAX_CELL_CHARS) -> str:
    """Cut *text* to *limit* characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def format_time(ts: Any, tz: datetime.tzinfo | None = None) -> str:
    """Epoch seconds as ``2025-11-23 10:01`` in *tz* (local time when None)."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return NONE if ts in (None, "") else "?"
    try:
        return datetime.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return "?"


def format_ago(ts: Any, now: float, tz: datetime.tzinfo | None = None) -> str:
    """How long ago *ts* was: ``12s ago``, ``3m ago``, ``5h ago``, then the date."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "never" if ts in (None, "") else "?"
    delta = now - ts
    if -5 <= delta < 1:
        return "just now"  # a few seconds of clock skew between hosts is normal
    if 0 < delta < 60:
        return f"{int(delta)}s ago"
    if 0 < delta < 3600:
        return f"{int(delta // 60)}m ago"
    if 0 < delta < 86400:
        return f"{int(delta // 3600)}h ago"
    return format_time(ts, tz)


def format_duration(seconds: float) -> str:
    """A duration as ``3d 4h``, ``2h 13m``, ``5m 2s`` or ``12s``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 limit: int = MAX_CELL_CHARS) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks; cells
    cut to *limit* characters."""
    cells = [[truncate(escape_text(cell), limit) if cell not in (None, "") else NONE
              for cell in row] for row in rows]
    widths = [display_width(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = []
    for row in [list(headers)] + cells:
        padded = [cell + " " * (widths[i] - display_width(cell)) for i, cell in enumerate(row)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _state(machine: dict) -> str:
    if machine.get("jid") == "":  # registered by medulla-pxe, no agent has enrolled yet
        return "not imaged yet"
    return "online" if machine.get("online") is True else "offline"


def _list(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return ", ".join(escape_text(v) for v in values) or NONE
    return escape_text(values) if values not in (None, "") else NONE


def _first_ip(machine: dict) -> str:
    ips = machine.get("ips")
    if not isinstance(ips, list) or not ips:
        return NONE
    more = f" (+{len(ips) - 1})" if len(ips) > 1 else ""
    return escape_text(ips[0]) + more


def render_machines(machines: Sequence[dict], now: float,
                    tz: datetime.tzinfo | None = None) -> str:
    """The ``medullactl machines`` table, sorted by hostname, and its count line."""
    ordered = sorted(machines, key=lambda m: (str(m.get("hostname", "")).casefold(),
                                              str(m.get("uuid", ""))))
    rows = [(m.get("hostname"), _state(m), format_ago(m.get("last_seen"), now, tz),
             _first_ip(m), m.get("os"), m.get("agent_version"), m.get("uuid"))
            for m in ordered]
    online = sum(1 for m in machines if m.get("online") is True)
    noun = "machine" if len(machines) == 1 else "machines"
    summary = f"{len(machines)} {noun}, {online} online"
    return (render_table(MACHINE_COLUMNS, rows) + "\n" + summary) if rows else summary


def render_machine(machine: dict, now: float, tz: datetime.tzinfo | None = None) -> str:
    """``medullactl machine show``: ``label: value`` lines, then the HISTORY table."""
    pairs = []
    for key, label in MACHINE_FIELDS:
        value = machine.get(key)
        if key == "online":
            text = _state(machine)
        elif key == "last_seen":
            text = format_ago(value, now, tz)
            if text.endswith("ago") or text == "just now":
                text += f" ({format_time(value, tz)})"
        elif key == "enrolled_at":
            text = format_time(value, tz)
        else:
            text = _list(value)
        pairs.append((label, text))
    known = {key for key, _ in MACHINE_FIELDS} | {"history"}
    # Fields a newer master adds still show up, after the known ones.
    pairs += [(escape_text(key), _list(machine[key]))
              for key in sorted(machine) if key not in known]
    width = max(len(label) for label, _ in pairs) + 1
    lines = [f"{(label + ':').ljust(width)} {text}" for label, text in pairs]
    history = machine.get("history") or []
    lines += ["", "HISTORY"]
    if history:
        rows = [(format_time(h.get("ts"), tz), h.get("event"), h.get("detail"))
                for h in history if isinstance(h, dict)]
        lines.append(render_table(HISTORY_COLUMNS, rows))
    else:
        lines.append("(no events)")
    return "\n".join(lines)


def render_key_reset(result: dict) -> str:
    """``medullactl machine reset-key``: which machine, and what happens next."""
    return (f"key of {escape_text(result.get('hostname') or '?')} "
            f"({escape_text(result.get('uuid') or '?')}) reset: "
            "its next enrolment pins the new key")


def render_candidates(candidates: Sequence[dict]) -> str:
    """The machines an ambiguous name matched, as a table (JIDs when the API gave them)."""
    if not any(c.get("jid") for c in candidates):
        return render_table(("HOSTNAME", "UUID"), [(c.get("hostname"), c.get("uuid"))
                                                   for c in candidates])
    rows = [(c.get("hostname"), c.get("uuid"), c.get("jid")) for c in candidates]
    return render_table(("HOSTNAME", "UUID", "JID"), rows)


def render_status(status: dict, now: float, tz: datetime.tzinfo | None = None) -> str:
    """``medullactl status``: version and uptime, XMPP link, machine counts."""
    server_time = status.get("server_time")
    started = status.get("started_at")
    line = f"medulla-master {escape_text(status.get('version', '?'))}"
    if isinstance(started, (int, float)) and not isinstance(started, bool):
        # Uptime from the master's own clock, so skew with this host does not matter.
        reference = server_time if isinstance(server_time, (int, float)) else now
        line += f", up {format_duration(reference - started)} (since {format_time(started, tz)})"
    xmpp = status.get("xmpp") if isinstance(status.get("xmpp"), dict) else {}
    if xmpp.get("connected") is True:
        link = f"connected as {escape_text(xmpp.get('jid') or '?')}"
    else:
        link = "NOT connected"
    counts = status.get("machines") if isinstance(status.get("machines"), dict) else {}
    machines = ", ".join(f"{escape_text(counts.get(k, '?'))} {k}"
                         for k in ("total", "online", "offline"))
    return "\n".join([line, f"xmpp:     {link}", f"machines: {machines}"])


def emit(args, data, human: str, out) -> int:
    """Print the API's ``data`` as JSON with ``--json``, else the ``human`` text; exit 0."""
    if args.json:
        args.print_json(data, out)
    else:
        print(human, file=out)
    return 0
