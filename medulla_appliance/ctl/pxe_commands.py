"""``medullactl pxe menu ...``: medulla-pxe's boot menus, over the master's API.

    pxe menu list | show NAME | assignments
    pxe menu create NAME [--title T] [--timeout S] [--copy-from MENU]
    pxe menu delete NAME
    pxe menu add-item NAME (--service S | --master TITLE) [boot, flags, --position N]
    pxe menu remove-item NAME LABEL
    pxe menu move NAME LABEL POSITION
    pxe menu set NAME [LABEL] [--title T] [--timeout S] [flags, boot]
    pxe menu assign MENU (--mac M | --uuid U | --group G | --server S | --registration)
    pxe menu unassign (--mac M | --uuid U | --group G | --server S)
    pxe menu reset (--mac M | --uuid U | --group G | --copies-of MENU)

A menu given to a MAC, UUID or group becomes that entity's own copy (``mac:...``), which
later changes to the original do not reach until ``reset``, as in Medulla.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from medulla_appliance.ctl.client import ApiClient, _segment
from medulla_appliance.ctl.render import NONE, emit, escape_text, render_table

EXIT_OK = 0
TARGETS = ("mac", "uuid", "group", "server")


def add_parser(commands, command) -> None:
    """Add ``pxe`` to medullactl's subparsers."""
    pxe = command(commands, "pxe", help="medulla-pxe boot menus",
                  description="Boot menus served to PXE workstations by medulla-pxe.")
    what = pxe.add_subparsers(dest="pxe_what", metavar="WHAT", required=True)
    menu = command(what, "menu", help="list, show, edit and assign boot menus",
                   description=__doc__.split("\n\n")[2].replace("\n", " "))
    actions = menu.add_subparsers(dest="pxe_action", metavar="ACTION", required=True)

    command(actions, "list", help="every menu").set_defaults(run=_list)
    command(actions, "assignments", help="who gets which menu").set_defaults(run=_assignments)
    show = command(actions, "show", help="a menu's items and assignments")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(run=_show)

    create = command(actions, "create", help="a new menu (one 'continue' item, or a copy)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--title")
    create.add_argument("--timeout", type=int, default=10,
                        help="seconds before the default item is taken (0: at once)")
    create.add_argument("--copy-from", metavar="MENU", help="start from this menu's items")
    create.set_defaults(run=_create)
    delete = command(actions, "delete", help="remove a menu (not while assigned)")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(run=_delete)

    add = command(actions, "add-item", help="add a service or a master to a menu")
    add.add_argument("name", metavar="NAME")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--service", help="continue, backup, register, register-ask, reboot, "
                                        "poweroff")
    kind.add_argument("--master", metavar="TITLE", help="an image: what the menu shows")
    add.add_argument("--label", help="the item's name in commands (default: from the title)")
    add.add_argument("--title", help="text shown (services have one by default)")
    add.add_argument("--position", type=int, help="1 = first (default: last)")
    _item_options(add)
    add.set_defaults(run=_add_item)

    remove = command(actions, "remove-item", help="remove an item (never the last service)")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("label", metavar="LABEL")
    remove.set_defaults(run=_remove_item)
    move = command(actions, "move", help="move an item to POSITION (1 = first)")
    move.add_argument("name", metavar="NAME")
    move.add_argument("label", metavar="LABEL")
    move.add_argument("position", metavar="POSITION", type=int)
    move.set_defaults(run=_move)

    change = command(actions, "set", help="change a menu, or one of its items (LABEL)")
    change.add_argument("name", metavar="NAME")
    change.add_argument("label", metavar="LABEL", nargs="?")
    change.add_argument("--title")
    change.add_argument("--timeout", type=int, help="menu only")
    _item_options(change, flags_off=True)
    change.set_defaults(run=_set)

    assign = command(actions, "assign", help="give MENU to a machine, group, imaging server "
                                             "or to unknown machines")
    assign.add_argument("menu", metavar="MENU")
    _target_options(assign, registration=True)
    assign.set_defaults(run=_assign)
    unassign = command(actions, "unassign", help="take a menu back (an own copy is removed)")
    _target_options(unassign)
    unassign.set_defaults(run=_unassign)
    reset = command(actions, "reset", help="copy again the menu an own menu came from")
    group = _target_options(reset, servers=False)
    group.add_argument("--copies-of", metavar="MENU", help="every own copy of MENU")
    reset.set_defaults(run=_reset)


def _item_options(parser, flags_off=False):
    boot = parser.add_argument_group("boot (masters and backup)")
    boot.add_argument("--kernel", metavar="URL", help="{server} stands for our address")
    boot.add_argument("--initrd", metavar="URL", action="append")
    boot.add_argument("--args", help="kernel command line")
    boot.add_argument("--chain", metavar="URL", help="chain this iPXE script or image instead")
    flags = parser.add_argument_group("flags")
    for flag, text in (("default", "taken after the timeout"),
                       ("default-on-wol", "taken after the timeout when woken by WOL")):
        flags.add_argument("--" + flag, action="store_true", default=None, help=text)
    flags.add_argument("--hidden", dest="visible", action="store_false", default=None,
                       help="not shown in the menu")
    if flags_off:
        flags.add_argument("--visible", dest="visible", action="store_true",
                           help="shown in the menu")


def _target_options(parser, registration=False, servers=True):
    group = parser.add_mutually_exclusive_group(required=True)
    for target in TARGETS if servers else TARGETS[:3]:
        group.add_argument("--" + target, metavar=target.upper())
    if registration:
        group.add_argument("--registration", action="store_true",
                           help="the menu unknown machines get")
    return group


def _target(args) -> tuple[str, str]:
    if getattr(args, "registration", False):
        return "registration", ""
    for target in TARGETS:
        if getattr(args, target, None):
            return target, getattr(args, target)
    raise argparse.ArgumentTypeError("a target is needed")


def _boot(args) -> dict | None:
    if args.chain:
        return {"chain": args.chain}
    if args.kernel:
        return {"kernel": args.kernel, "initrd": args.initrd or [], "args": args.args or ""}
    return None


def _flags(args) -> dict:
    fields = {}
    for name in ("default", "default_on_wol", "visible"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    return fields


def _menus(path="") -> str:
    return "/api/v1/pxe/menus" + path


def _out(args, out, data, text) -> int:
    return emit(args, data, text, out)


# -- commands ----------------------------------------------------------------------------

def _list(client: ApiClient, args, out: TextIO, now: float) -> int:
    menus = client.pxe("GET", _menus())["menus"]
    rows = [(m["name"], m["title"], m["timeout"], m["items"], ", ".join(m["assigned"]) or NONE,
             m["source"]) for m in menus]
    return _out(args, out, menus, render_table(
        ("NAME", "TITLE", "TIMEOUT", "ITEMS", "ASSIGNED TO", "COPIED FROM"), rows))


def _assignments(client, args, out, now) -> int:
    rows = client.pxe("GET", "/api/v1/pxe/assignments")["assignments"]
    return _out(args, out, rows, render_table(
        ("KIND", "TARGET", "MENU"), [(r["kind"], r["target"], r["menu"]) for r in rows]))


def _show(client, args, out, now) -> int:
    menu = client.pxe("GET", _menus("/" + _segment(args.name)))
    return _out(args, out, menu, render_menu(menu))


def _create(client, args, out, now) -> int:
    body = {"name": args.name, "timeout": args.timeout}
    if args.title:
        body["title"] = args.title
    if args.copy_from:
        body["copy_from"] = args.copy_from
    menu = client.pxe("POST", _menus(), body)
    return _out(args, out, menu, render_menu(menu))


def _delete(client, args, out, now) -> int:
    result = client.pxe("DELETE", _menus("/" + _segment(args.name)))
    return _out(args, out, result, f"menu {escape_text(args.name)} deleted")


def _add_item(client, args, out, now) -> int:
    item = {"kind": "service", "service": args.service} if args.service else \
        {"kind": "master", "title": args.master}
    for key in ("label", "title", "position"):
        if getattr(args, key) is not None:
            item[key] = getattr(args, key)
    if _boot(args):
        item["boot"] = _boot(args)
    item.update(_flags(args))
    menu = client.pxe("POST", _menus(f"/{_segment(args.name)}/items"), item)
    return _out(args, out, menu, render_menu(menu))


def _remove_item(client, args, out, now) -> int:
    menu = client.pxe("DELETE", _menus(f"/{_segment(args.name)}/items/{_segment(args.label)}"))
    return _out(args, out, menu, render_menu(menu))


def _move(client, args, out, now) -> int:
    menu = client.pxe("POST", _menus(f"/{_segment(args.name)}/items/{_segment(args.label)}"
                                     "/move"), {"position": args.position})
    return _out(args, out, menu, render_menu(menu))


def _set(client, args, out, now) -> int:
    if args.label is None:
        body = {k: getattr(args, k) for k in ("title", "timeout") if getattr(args, k) is not None}
        path = _menus("/" + _segment(args.name))
    else:
        body = _flags(args)
        if args.title is not None:
            body["title"] = args.title
        if _boot(args):
            body["boot"] = _boot(args)
        path = _menus(f"/{_segment(args.name)}/items/{_segment(args.label)}")
    menu = client.pxe("PATCH", path, body)
    return _out(args, out, menu, render_menu(menu))


def _assign(client, args, out, now) -> int:
    kind, target = _target(args)
    path = f"/api/v1/pxe/assignments/{kind}" + (f"/{_segment(target)}" if target else "")
    menu = client.pxe("PUT", path, {"menu": args.menu})
    return _out(args, out, menu, f"{kind} {escape_text(target)} gets menu "
                f"{escape_text(menu['name'])}".replace("  ", " "))


def _unassign(client, args, out, now) -> int:
    kind, target = _target(args)
    result = client.pxe("DELETE", f"/api/v1/pxe/assignments/{kind}/{_segment(target)}")
    return _out(args, out, result, f"{kind} {escape_text(target)} no longer has menu "
                f"{escape_text(result['menu'])}")


def _reset(client, args, out, now) -> int:
    if args.copies_of:
        result = client.pxe("POST", _menus(f"/{_segment(args.copies_of)}/reset-copies"), None)
        return _out(args, out, result, "reset: " + (", ".join(map(escape_text, result["reset"]))
                                                   or "no copy"))
    kind, target = _target(args)
    menu = client.pxe("POST", f"/api/v1/pxe/assignments/{kind}/{_segment(target)}/reset", None)
    return _out(args, out, menu, render_menu(menu))


# -- rendering ---------------------------------------------------------------------------

def _item_target(item: dict) -> str:
    boot = item.get("boot") or {}
    if boot.get("chain"):
        return "chain " + boot["chain"]
    if boot.get("kernel"):
        return " ".join(["kernel " + boot["kernel"], *boot.get("initrd", []), boot.get("args", "")])
    return item.get("service") or NONE


def render_menu(menu: dict) -> str:
    """``pxe menu show``: the menu's header lines, then its items in boot order."""
    lines = [f"menu:     {escape_text(menu.get('name'))}",
             f"title:    {escape_text(menu.get('title'))}",
             f"timeout:  {escape_text(menu.get('timeout'))}s"]
    if menu.get("source"):
        lines.append(f"copy of:  {escape_text(menu['source'])} (reset to copy it again)")
    if "assigned" in menu:
        lines.append("assigned: " + (", ".join(map(escape_text, menu["assigned"])) or NONE))
    rows = []
    for n, item in enumerate(menu.get("items") or [], 1):
        flags = [f for f, key in (("default", "default"), ("wol", "default_on_wol"))
                 if item.get(key)] + ([] if item.get("visible") else ["hidden"])
        rows.append((n, item.get("label"), item.get("kind"), item.get("title"),
                     ",".join(flags) or NONE, _item_target(item)))
    return "\n".join(lines) + "\n\n" + render_table(
        ("#", "LABEL", "KIND", "TITLE", "FLAGS", "BOOTS"), rows, limit=80)
