"""``medullactl relays`` and ``medullactl relay show|reset-key NAME``: the relays enrolled
with the master (``/api/v1/relays``), and their rendering."""

from __future__ import annotations

from typing import TextIO

from medulla_appliance.ctl import render
from medulla_appliance.ctl.client import ApiClient

EXIT_OK = 0
RELAY_COLUMNS = ("NAME", "STATE", "LAST SEEN", "KEY", "DAEMONS", "DOWNLOADS", "PACKAGES")


def add_parser(commands, command) -> None:
    """Add ``relays`` and ``relay`` to medullactl's subparsers."""
    relays = command(commands, "relays", help="list the relays",
                     description="List the relays enrolled with the master (and the master "
                                 "host's own relay once it reported).")
    relays.set_defaults(run=_list)
    relay = command(commands, "relay", help="one relay",
                    description="Commands about one relay.")
    actions = relay.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = command(actions, "show", help="a relay, its daemons, load and packages",
                   description="Show a relay: key, daemons, last status, the packages "
                               "complete on it.")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(run=_show)
    reset = command(actions, "reset-key", help="forget a relay's pinned key",
                    description="Forget the key the master pinned for relay NAME: the next "
                                "relay.register of its daemons pins the new key (after "
                                "reinstalling the relay host). Until then nothing from it "
                                "is trusted; restart its daemons to enrol at once.")
    reset.add_argument("name", metavar="NAME")
    reset.set_defaults(run=_reset_key)


def _list(client: ApiClient, args, out: TextIO, now: float) -> int:
    relays = client.relays()
    return render.emit(args, relays, render_relays(relays, now), out)


def _show(client: ApiClient, args, out: TextIO, now: float) -> int:
    relay = client.relay(args.name)
    return render.emit(args, relay, render_relay(relay, now), out)


def _reset_key(client: ApiClient, args, out: TextIO, now: float) -> int:
    result = client.reset_relay_key(args.name)
    name = render.escape_text(result.get("relay") or args.name)
    return render.emit(args, result, f"key of relay {name} reset: its next enrolment pins "
                       "the new key", out)


def _state(relay: dict) -> str:
    if not relay.get("enrolled"):
        return "key reset"
    return "online" if relay.get("online") is True else "offline"


def _load(relay: dict, key: str):
    status = relay.get("status") if isinstance(relay.get("status"), dict) else {}
    if key == "packages_complete":
        return status.get(key)
    load = status.get("load") if isinstance(status.get("load"), dict) else {}
    return load.get(key)


def render_relays(relays: list[dict], now: float) -> str:
    """The ``medullactl relays`` table and its count line."""
    rows = [(r.get("name"), _state(r), render.format_ago(r.get("last_seen"), now),
             r.get("key_fingerprint"), ", ".join(sorted(r.get("daemons") or {})),
             _load(r, "active_downloads"), _load(r, "packages_complete"))
            for r in sorted(relays, key=lambda r: str(r.get("name")))]
    online = sum(1 for r in relays if r.get("online") is True)
    summary = f"{len(relays)} relay{'' if len(relays) == 1 else 's'}, {online} online"
    return (render.render_table(RELAY_COLUMNS, rows) + "\n" + summary) if rows else summary


def render_relay(relay: dict, now: float) -> str:
    """``medullactl relay show``: label lines, then the daemons and the packages."""
    status = relay.get("status") if isinstance(relay.get("status"), dict) else {}
    load = status.get("load") if isinstance(status.get("load"), dict) else {}
    pairs = [("name", relay.get("name")), ("state", _state(relay)), ("jid", relay.get("jid")),
             ("key fingerprint", relay.get("key_fingerprint") or "(none: the next enrolment "
                                                                  "pins one)"),
             ("last seen", render.format_ago(relay.get("last_seen"), now)),
             ("enrolled", render.format_time(relay.get("enrolled_at"))),
             ("version", relay.get("version")), ("package url", relay.get("package_url")),
             ("packages complete", status.get("packages_complete"))]
    pairs += [(f"load {key}", value) for key, value in sorted(load.items())]
    width = max(len(label) for label, _ in pairs) + 1
    lines = [f"{(label + ':').ljust(width)} "
             f"{render.escape_text(value) if value not in (None, '') else render.NONE}"
             for label, value in pairs]
    daemons = relay.get("daemons") if isinstance(relay.get("daemons"), dict) else {}
    lines += ["", "DAEMONS"]
    lines.append(render.render_table(
        ("DAEMON", "VERSION", "RESOURCE", "REGISTERED"),
        [(name, d.get("version"), d.get("resource"), render.format_time(d.get("registered_at")))
         for name, d in sorted(daemons.items()) if isinstance(d, dict)])
        if daemons else "(none registered)")
    packages = [p for p in relay.get("packages") or [] if isinstance(p, dict)]
    lines += ["", "PACKAGES COMPLETE (package.synced)"]
    lines.append(render.render_table(
        ("PACKAGE", "DESCRIPTOR SHA-256", "SINCE"),
        [(p.get("package_id"), p.get("descriptor_sha256"), render.format_time(p.get("ts")))
         for p in packages], limit=64) if packages else "(none)")
    return "\n".join(lines)
