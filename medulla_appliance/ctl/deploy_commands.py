"""``medullactl package ...``, ``deploy ...`` and ``audit ...``: parsers and commands.

Each command takes ``(client, args, out, now)`` like the others in ``__main__``, prints a
table or, with ``--json``, the API's JSON, and returns the exit code.
"""

from __future__ import annotations

import argparse
import os
from typing import TextIO

from medulla_appliance.ctl import render_deploy as render
from medulla_appliance.ctl.client import ApiClient, ApiError
from medulla_appliance.ctl.render import emit as _print

EXIT_OK = 0
EXIT_INTERRUPTED = 130
#: ``audit ID --follow`` asks the master this often.
FOLLOW_INTERVAL = 1.0
_CLEAR_TO_END = "\x1b[K"


class UsageError(Exception):
    """Arguments argparse accepts but that do not go together (exit code 2)."""


def add_commands(commands, command) -> None:
    """Add ``package``, ``deploy`` and ``audit`` to the *commands* subparsers, built with
    *command* (``__main__``'s helper that adds the global options)."""
    package = command(commands, "package", help="add, list, show or remove packages",
                      description="The packages the master can deploy.")
    actions = package.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, fmt, text in (
            ("add", "native", "a folder with a descriptor.json and the files it lists"),
            ("import", "medulla", "a Medulla package folder (conf.json, xmppdeploy.json "
                                  "and its files), converted on the way")):
        add = command(actions, name, help=f"add {text.split(' (')[0]}",
                      description=f"Copy in {text}. PATH is on the master host and "
                                  "medulla-master must be able to read it (not under /home, "
                                  "/root or /tmp, which its sandbox hides).")
        add.add_argument("path", metavar="PATH")
        add.add_argument("--replace", action="store_true",
                         help="replace a package with the same id")
        add.set_defaults(run=_package_add, format=fmt)
    command(actions, "list", help="list packages",
            description="List the packages in the master's store.").set_defaults(
        run=_package_list)
    for name, run, text in (("show", _package_show, "Show a package's files and steps."),
                            ("rm", _package_rm, "Remove a package (refused while an active "
                                                "deployment uses it).")):
        sub = command(actions, name, help=text.split(" (")[0].rstrip(".").lower(),
                      description=text)
        sub.add_argument("package_id", metavar="ID")
        sub.set_defaults(run=run)

    deploy = command(
        commands, "deploy", help="deploy a package; stop or restart a deployment",
        usage="medullactl deploy PACKAGE TARGET... [--start TIME] "
              "[--end TIME | --window DURATION]\n"
              "                         [--max-per-relay N] [--retries N]\n"
              "       medullactl deploy stop ID\n"
              "       medullactl deploy restart ID",
        description="Deploy PACKAGE to each TARGET (a hostname, uuid or JID, or group:NAME) "
                    "within a time window; or stop, or restart, the deployment ID. TIME is "
                    "ISO 8601 local time (2025-11-23T20:00) or epoch seconds; DURATION is "
                    "like 90m, 2h or 1d. Without --end or --window the window is 24 hours.")
    deploy.add_argument("package", metavar="PACKAGE", help="package id, or stop / restart")
    deploy.add_argument("targets", metavar="TARGET", nargs="+",
                        help="machine or group:NAME (after stop / restart: the deployment ID)")
    deploy.add_argument("--start", metavar="TIME", help="start of the window (default: now)")
    end = deploy.add_mutually_exclusive_group()
    end.add_argument("--end", metavar="TIME", help="end of the window")
    end.add_argument("--window", metavar="DURATION", help="length of the window")
    deploy.add_argument("--max-per-relay", metavar="N", type=_count(1),
                        help="machines deploying at once per relay (default 10)")
    deploy.add_argument("--retries", metavar="N", type=_count(0),
                        help="new attempts after a failed transfer (default 1)")
    deploy.set_defaults(run=_deploy)

    audit = command(commands, "audit", help="deployments, their targets, a machine's log",
                    description="Without ID: the newest deployments. With ID: its targets "
                                "(--follow: a progress bar until every target is in a final "
                                "state). With ID and MACHINE: what that machine did, step "
                                "by step.")
    audit.add_argument("deployment", metavar="ID", nargs="?")
    audit.add_argument("machine", metavar="MACHINE", nargs="?",
                       help="hostname or uuid of a target")
    audit.add_argument("--follow", action="store_true",
                       help="redraw the progress every second until the deployment ends")
    audit.set_defaults(run=_audit)


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {low}, "
                                             f"got {text!r}")
        return value
    return parse


# -- package ---------------------------------------------------------------------------

def _package_add(client: ApiClient, args, out: TextIO, now: float) -> int:
    # medullactl runs on the master host: the folder is named as the master will see it.
    path = os.path.abspath(args.path)
    if not os.path.isdir(path):
        raise ApiError(f"no folder {path}")
    try:
        summary = client.add_package(path, replace=args.replace, fmt=args.format)
    except ApiError as e:
        if e.status == 409 and e.body.get("error") == "exists":
            raise ApiError(f"{str(e).split(' (')[0]}: add --replace to replace it",
                           e.status, e.body) from None
        raise
    return _print(args, summary, render.render_package_added(summary, args.replace), out)


def _package_list(client: ApiClient, args, out: TextIO, now: float) -> int:
    packages = client.packages()
    return _print(args, packages, render.render_packages(packages), out)


def _package_show(client: ApiClient, args, out: TextIO, now: float) -> int:
    descriptor = client.package(args.package_id)
    return _print(args, descriptor, render.render_package(descriptor), out)


def _package_rm(client: ApiClient, args, out: TextIO, now: float) -> int:
    result = client.remove_package(args.package_id)
    return _print(args, result, f"package {render.escape_text(args.package_id)} removed", out)


# -- deploy ----------------------------------------------------------------------------

def _deploy(client: ApiClient, args, out: TextIO, now: float) -> int:
    if args.package in ("stop", "restart") and len(args.targets) == 1:
        if any(getattr(args, o) is not None for o in ("start", "end", "window",
                                                      "max_per_relay", "retries")):
            raise UsageError(f"deploy {args.package} takes only a deployment ID")
        if args.package == "stop":
            result = client.stop_deployment(args.targets[0])
            return _print(args, result, render.render_stopped(result), out)
        result = client.restart_deployment(args.targets[0])
        return _print(args, result, render.render_restarted(result), out)
    request = {"package": args.package, "targets": args.targets}
    try:
        start = None if args.start is None else render.parse_time(args.start)
        if args.end is not None:
            request["end"] = render.parse_time(args.end)
        elif args.window is not None:
            request["end"] = (now if start is None else start) + render.parse_window(args.window)
    except ValueError as e:
        raise UsageError(str(e)) from None
    request["start"] = start
    for option in ("max_per_relay", "retries"):
        if getattr(args, option) is not None:
            request[option] = getattr(args, option)
    try:
        dep = client.deploy(request)
    except ApiError as e:
        if e.status == 413:
            raise ApiError(f"{e} — name long target lists as a group (group:NAME)",
                           e.status, e.body) from None
        raise
    return _print(args, dep, render.render_created(dep), out)


# -- audit -----------------------------------------------------------------------------

def _audit(client: ApiClient, args, out: TextIO, now: float) -> int:
    if args.follow and (args.deployment is None or args.machine is not None):
        raise UsageError("--follow needs a deployment ID and no MACHINE")
    if args.deployment is None:
        deployments = client.deployments()
        return _print(args, deployments, render.render_deployments(deployments, now), out)
    if args.machine is not None:
        audit = client.audit(args.deployment, args.machine)
        return _print(args, audit, render.render_audit(audit), out)
    if args.follow:
        return _follow(client, args, out)
    dep = client.deployment(args.deployment)
    return _print(args, dep, render.render_deployment(dep, now), out)


def _follow(client: ApiClient, args, out: TextIO) -> int:
    """Show the progress until every target is final: redrawn in place on a terminal,
    a line per change otherwise; with --json, only the final details."""
    redraw = not args.json and out.isatty()
    shown, line = False, None
    try:
        while True:
            dep = client.deployment(args.deployment)
            tally = render.tally_targets(dep, args.clock())
            text = render.render_progress(tally)
            if redraw:
                out.write("\r" + text + _CLEAR_TO_END)
                shown = True
            elif not args.json and text != line:
                out.write(text + "\n")
            out.flush()
            line = text
            if tally.settled:
                break
            args.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        if shown:
            out.write("\n")
        return EXIT_INTERRUPTED
    except BaseException:
        if shown:
            out.write("\n")  # the error message starts on a line of its own
        raise
    if shown:
        out.write("\n")
    if args.json:
        args.print_json(dep, out)
    elif tally.failed:
        dep_id = render.escape_text(args.deployment)
        print(f"{tally.failed} failed: see medullactl audit {dep_id}", file=out)
    return EXIT_OK
