"""``medullactl group list|show|create|add|remove|delete``: saved groups of machines, the
``group:NAME`` targets of ``medullactl deploy``.

Machines are named as everywhere else (hostname, uuid or JID); the master resolves them
and refuses, changing nothing, a name it does not know or one several machines share
(the candidates are listed, as for ``machine show``). ``--json`` prints the API's JSON.
"""

from __future__ import annotations

from typing import TextIO

from medulla_appliance.ctl import render
from medulla_appliance.ctl.client import ApiClient, ApiError
from medulla_appliance.ctl.render import emit as _print

EXIT_OK = 0
GROUP_COLUMNS = ("GROUP", "MACHINES", "ONLINE", "UPDATED")
MEMBER_COLUMNS = ("HOSTNAME", "STATE", "RELAY", "UUID")


def add_parser(commands, command) -> None:
    """Add the ``group`` command to medullactl's subparsers."""
    group = command(commands, "group", help="saved groups of machines (deploy group:NAME)",
                    description="Saved groups of machines: deploy to one with "
                                "'medullactl deploy PACKAGE group:NAME'. MACHINE is a "
                                "hostname, a uuid or a JID.")
    actions = group.add_subparsers(dest="group_action", metavar="ACTION", required=True)
    command(actions, "list", help="the groups and their sizes").set_defaults(run=_list)
    show = command(actions, "show", help="a group's machines")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(run=_show)
    create = command(actions, "create", help="create a group (of MACHINEs, or empty)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("machines", metavar="MACHINE", nargs="*")
    create.add_argument("--replace", action="store_true",
                        help="replace the machines of an existing group")
    create.set_defaults(run=_create)
    for verb, text in (("add", "add machines to a group"),
                       ("remove", "remove machines from a group")):
        sub = command(actions, verb, help=text)
        sub.add_argument("name", metavar="NAME")
        sub.add_argument("machines", metavar="MACHINE", nargs="+")
        sub.set_defaults(run=_change, verb=verb)
    delete = command(actions, "delete", help="delete a group (its machines stay)")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(run=_delete)


def _list(client: ApiClient, args, out: TextIO, now: float) -> int:
    groups = client.groups()
    return _print(args, groups, render_groups(groups, now), out)


def _show(client: ApiClient, args, out: TextIO, now: float) -> int:
    group = client.group(args.name)
    return _print(args, group, render_group(group), out)


def _create(client: ApiClient, args, out: TextIO, now: float) -> int:
    try:
        group = client.create_group(args.name, args.machines, replace=args.replace)
    except ApiError as e:
        if e.status == 409 and e.body.get("error") == "exists":
            raise ApiError(f"group {args.name!r} exists: add --replace to replace its "
                           "machines", e.status, e.body) from None
        raise
    size = len(group.get("machines") or [])
    verb = "replaced" if args.replace else "created"
    return _print(args, group, f"group {render.escape_text(args.name)} {verb}: {size} "
                               f"machine{'' if size == 1 else 's'}", out)


def _change(client: ApiClient, args, out: TextIO, now: float) -> int:
    result = client.change_group(args.name, args.verb, args.machines)
    count = result.get("added" if args.verb == "add" else "removed")
    done = "added to" if args.verb == "add" else "removed from"
    return _print(args, result, f"{render.escape_text(count)} machine"
                                f"{'' if count == 1 else 's'} {done} group "
                                f"{render.escape_text(args.name)} (now "
                                f"{render.escape_text(result.get('size'))})", out)


def _delete(client: ApiClient, args, out: TextIO, now: float) -> int:
    result = client.delete_group(args.name)
    return _print(args, result, f"group {render.escape_text(args.name)} deleted (its "
                                "machines are not touched)", out)


def render_groups(groups, now: float) -> str:
    """``medullactl group list``: one line per group."""
    rows = [(g.get("name"), g.get("machines"), g.get("online"),
             render.format_ago(g.get("updated_at") or None, now)) for g in groups]
    count = f"{len(rows)} group" + ("" if len(rows) == 1 else "s")
    return (render.render_table(GROUP_COLUMNS, rows) + "\n" + count) if rows else count


def render_group(group: dict) -> str:
    """``medullactl group show NAME``: its machines."""
    machines = [m for m in group.get("machines") or [] if isinstance(m, dict)]
    head = f"group {render.escape_text(group.get('name'))}: {len(machines)} machine" + \
        ("" if len(machines) == 1 else "s")
    if not machines:
        return head
    rows = [(m.get("hostname"), "online" if m.get("online") else "offline", m.get("relay"),
             m.get("uuid")) for m in machines]
    return head + "\n" + render.render_table(MEMBER_COLUMNS, rows)
