"""`medullactl guard ...`: medulla-guard.

``status``, ``bans``, ``ban ADDR`` and ``unban ADDR`` ask medulla-guard on *this host*
through its local control socket (no master API, no token: the socket's mode decides).
``fleet`` asks the *master's API* for the bans in force on every host (the master and
each relay report theirs with guard.ban/guard.unban); it lives here rather than as a
top-level ``medullactl bans`` so that everything about medulla-guard is under one command,
and its help says where each answer comes from.
"""

import json

from ..guard import control
from . import render

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 3


def add_parser(commands, command):
    """Add the `guard` command to medullactl's subparsers."""
    guard = command(commands, "guard", help="medulla-guard: bans on this host, or fleet-wide",
                    description="status, bans, ban and unban ask medulla-guard on this "
                                "host through its control socket (--socket); fleet asks "
                                "the master's API (--url, --token-file) for the bans of "
                                "every host.")
    guard.add_argument("--socket", default=control.DEFAULT_SOCKET,
                       help="control socket of the local commands (default %(default)s)")
    actions = guard.add_subparsers(dest="guard_action", metavar="ACTION", required=True)
    local = [
        command(actions, "status", help="this host: backend, jails, number of bans"),
        command(actions, "bans", help="this host: the addresses banned now"),
    ]
    ban = command(actions, "ban", help="this host: ban an address now")
    ban.add_argument("address")
    ban.add_argument("--seconds", type=float, default=None, help="how long (default: "
                     "[guard] manual_bantime)")
    unban = command(actions, "unban", help="this host: lift a ban now")
    unban.add_argument("address")
    for parser in local + [ban, unban]:
        parser.set_defaults(run_local=run)
    fleet = command(actions, "fleet", help="every host, from the master's API: the bans "
                                           "in force",
                    description="The bans in force on the master host and every relay, as "
                                "their medulla-guard reported them to the master "
                                "(GET /api/v1/bans).")
    fleet.add_argument("--host", default=None, help="only this host ('master' or a relay "
                                                    "name)")
    fleet.set_defaults(run=run_fleet)


def run(args, out, err):
    """Run a local guard command; returns the exit code."""
    try:
        if args.guard_action == "status":
            reply = control.status(socket_path=args.socket)
        elif args.guard_action == "bans":
            reply = control.bans(socket_path=args.socket)
        elif args.guard_action == "ban":
            reply = control.ban(args.address, args.seconds, socket_path=args.socket)
        else:
            reply = control.unban(args.address, socket_path=args.socket)
    except control.ControlRefused as e:
        print("medullactl: medulla-guard refused: %s" % render.escape_text(str(e)), file=err)
        return EXIT_REFUSED
    except control.ControlClientError as e:
        print("medullactl: %s — is medulla-guard running? (systemctl status medulla-guard)"
              % e, file=err)
        return EXIT_UNREACHABLE
    if getattr(args, "json", False):
        print(json.dumps(reply, indent=2, sort_keys=True), file=out)
    else:
        print(render_reply(args.guard_action, reply), file=out)
    return EXIT_OK


def run_fleet(client, args, out, now):
    """`medullactl guard fleet`: the master's list, as a table or JSON."""
    bans = client.bans(args.host)
    return render.emit(args, bans, render_fleet(bans, now), out)


def render_fleet(bans, now):
    """Plain text for the fleet's bans: address, host, jail, until (and time left)."""
    if not bans:
        return "no address is banned on any host"
    rows = []
    for ban in bans:
        until = ban.get("until")
        left = render.format_duration(until - now) if isinstance(until, (int, float)) \
            and not isinstance(until, bool) else "?"
        rows.append([ban.get("address"), ban.get("host"), ban.get("jail"),
                     "%s (%s)" % (render.format_time(until), left),
                     "admin" if ban.get("manual") is True else str(ban.get("failures"))])
    return render.render_table(["ADDRESS", "HOST", "JAIL", "UNTIL", "FAILURES"], rows)


def render_reply(action, reply):
    """Plain text for a guard reply."""
    if action == "bans":
        if not reply:
            return "no address is banned"
        rows = [[b["address"], b["jail"], str(b["failures"]), str(b["offence"]),
                 render.format_duration(b["remaining_s"])] for b in reply]
        return render.render_table(["ADDRESS", "JAIL", "FAILURES", "OFFENCE", "REMAINING"],
                                   rows)
    if action == "status":
        jails = ", ".join(j.get("name", "?") for j in reply.get("jails", []))
        return "\n".join([
            "backend:   %s (table %s)" % (reply.get("backend"), reply.get("table")),
            "jails:     %s" % (jails or "-"),
            "bans:      %s" % reply.get("bans"),
            "allowlist: %s" % ", ".join(reply.get("allowlist", [])),
        ])
    if action == "ban":
        ban = reply["ban"]
        return "banned %s for %s" % (ban["address"], render.format_duration(
            ban["banned_for_s"]))
    return ("unbanned %s" if reply.get("was_banned") else "%s was not banned") % (
        reply["address"])
