"""``medullactl``: the admin command line over the master's HTTP API.

Exit codes: 0 ok, 1 not found / ambiguous / API error, 2 usage, 3 the master cannot be
reached, 4 token or authentication problem, 130 interrupted (Ctrl-C). Errors are one line
on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Mapping, Sequence, TextIO

from medulla_appliance.ctl import (
    group_commands,
    guard_commands,
    pxe_commands,
    relay_commands,
    render,
)
from medulla_appliance.ctl.client import (
    DEFAULT_URL,
    EXIT_API,
    EXIT_AUTH,
    Ambiguous,
    ApiClient,
    ClientError,
    check_url,
)
from medulla_appliance.ctl.deploy_commands import UsageError, add_commands
from medulla_appliance.master.apitoken import DEFAULT_TOKEN_PATH, TokenFileError, read_token

EXIT_OK = 0
EXIT_USAGE = 2
PROG = "medullactl"


def _add_global_options(parser: argparse.ArgumentParser, env: Mapping[str, str] | None) -> None:
    """--json, --url, --token-file; real defaults on the top level only.

    The copies on subcommands (so ``machines --json`` works too) default to SUPPRESS,
    so an option given before the command is not reset by the subcommand's default.
    """
    top = env is not None
    parser.add_argument("--json", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="print the API's JSON instead of a table")
    parser.add_argument("--url", metavar="URL",
                        default=(env.get("MEDULLA_API_URL") or DEFAULT_URL) if top
                        else argparse.SUPPRESS,
                        help=f"master API base URL (env MEDULLA_API_URL, default {DEFAULT_URL})")
    parser.add_argument("--token-file", metavar="PATH",
                        default=(env.get("MEDULLA_API_TOKEN_FILE") or DEFAULT_TOKEN_PATH) if top
                        else argparse.SUPPRESS,
                        help="API token file (env MEDULLA_API_TOKEN_FILE, "
                             f"default {DEFAULT_TOKEN_PATH})")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; defaults for --url and --token-file come from *env*."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query the Medulla master: machines, their history, its status; "
                    "reset a machine's pinned key; add packages, deploy them and audit "
                    "the deployments.",
        epilog="exit codes: 0 ok, 1 not found/ambiguous/API error, 2 usage, "
               "3 master unreachable, 4 token/authentication, 130 interrupted")
    _add_global_options(parser, env)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(container, name: str, **kwargs) -> argparse.ArgumentParser:
        sub = container.add_parser(name, **kwargs)
        _add_global_options(sub, None)
        return sub

    machines = command(commands, "machines", help="list machines",
                       description="List the machines the master knows.")
    state = machines.add_mutually_exclusive_group()
    state.add_argument("--online", dest="online", action="store_const", const=True,
                       default=None, help="only machines online now")
    state.add_argument("--offline", dest="online", action="store_const", const=False,
                       help="only machines offline now")
    machines.set_defaults(run=_machines)

    machine = command(commands, "machine", help="one machine",
                      description="Commands about one machine.")
    machine_commands = machine.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = command(machine_commands, "show", help="details and history of a machine",
                   description="Show a machine and its latest events. NAME is a hostname, "
                               "a uuid or a JID.")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(run=_show)
    reset_key = command(
        machine_commands, "reset-key", help="forget a machine's pinned key",
        description="Forget the key the master pinned for a machine, so that its next "
                    "enrolment pins the new one (after reinstalling its agent). NAME is a "
                    "hostname, a uuid or a JID.")
    reset_key.add_argument("name", metavar="NAME")
    reset_key.set_defaults(run=_reset_key)

    status = command(commands, "status", help="master status",
                     description="Show the master's version, XMPP link and machine counts.")
    status.set_defaults(run=_status)
    add_commands(commands, command)
    guard_commands.add_parser(commands, command)
    group_commands.add_parser(commands, command)
    relay_commands.add_parser(commands, command)
    pxe_commands.add_parser(commands, command)
    return parser


def _machines(client: ApiClient, args, out: TextIO, now: float) -> int:
    machines = client.machines(online=args.online)
    return render.emit(args, machines, render.render_machines(machines, now), out)


def _show(client: ApiClient, args, out: TextIO, now: float) -> int:
    machine = client.machine(args.name)
    return render.emit(args, machine, render.render_machine(machine, now), out)


def _reset_key(client: ApiClient, args, out: TextIO, now: float) -> int:
    result = client.reset_key(args.name)
    return render.emit(args, result, render.render_key_reset(result), out)


def _status(client: ApiClient, args, out: TextIO, now: float) -> int:
    status = client.status()
    return render.emit(args, status, render.render_status(status, now), out)


def _print_json(data, out: TextIO) -> None:
    # ASCII-only JSON: every control or bidi character a workstation sent is a \u escape.
    print(json.dumps(data, indent=2, ensure_ascii=True, sort_keys=True), file=out)


def _error(err: TextIO, message: str) -> None:
    print(f"{PROG}: {render.escape_text(message)}", file=err)


def run(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
        stdout: TextIO | None = None, stderr: TextIO | None = None,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Run one command and return its exit code (``main`` without ``sys.exit``)."""
    env = os.environ if env is None else env
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = build_parser(env)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    if hasattr(args, "run_local"):  # talks to a daemon on this host, not to the master
        return args.run_local(args, out, err)
    try:
        url = check_url(args.url)
    except ValueError as e:
        _error(err, str(e))
        return EXIT_USAGE
    try:
        token = read_token(args.token_file)
    except TokenFileError as e:
        _error(err, str(e))
        return EXIT_AUTH
    client = ApiClient(url, token, token_file=args.token_file)
    args.clock, args.sleep, args.print_json = now, sleep, _print_json  # for long commands
    try:
        return args.run(client, args, out, now())
    except UsageError as e:
        _error(err, str(e))
        return EXIT_USAGE
    except Ambiguous as e:
        _error(err, e.body.get("message") or str(e))
        candidates = [c for c in e.body.get("candidates") or [] if isinstance(c, dict)]
        if candidates:
            print(render.render_candidates(candidates), file=err)
        return EXIT_API
    except ClientError as e:
        _error(err, str(e))
        return e.exit_code


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: ``medullactl [--json] [--url URL] [--token-file PATH] COMMAND``."""
    try:
        code = run(argv)
        sys.stdout.flush()
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # ``medullactl machines | head``: the reader left; say nothing, like ls does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    main()
