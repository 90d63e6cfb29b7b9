"""`medullactl guard status|bans|ban ADDR|unban ADDR`: medulla-guard on this host,
through its local control socket (no master API, no token: the socket's mode decides)."""

import json

from ..guard import control
from . import render

EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 3


def add_parser(commands, command):
    """Add the `guard` command to medullactl's subparsers."""
    guard = command(commands, "guard", help="medulla-guard on this host (bans)",
                    description="Ask medulla-guard on this host, through its control socket.")
    guard.add_argument("--socket", default=control.DEFAULT_SOCKET,
                       help="control socket (default %(default)s)")
    actions = guard.add_subparsers(dest="guard_action", metavar="ACTION", required=True)
    command(actions, "status", help="backend, jails, number of bans")
    command(actions, "bans", help="the addresses banned now")
    ban = command(actions, "ban", help="ban an address now")
    ban.add_argument("address")
    ban.add_argument("--seconds", type=float, default=None, help="how long (default: the "
                     "jail's ban time)")
    unban = command(actions, "unban", help="lift a ban now")
    unban.add_argument("address")
    guard.set_defaults(run_local=run)


def run(args, out, err):
    """Run a guard command; returns the exit code."""
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
