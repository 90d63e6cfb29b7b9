"""The master's side of medulla-pxe: the ``pxe.menu`` and ``pxe.register`` envelopes, and
the menu edits the admin API asks for. Rules in :mod:`.logic.pxe_menus`, SQL in
:mod:`.pxe_storage`; this class runs them in store transactions and logs what changed.
"""

from __future__ import annotations

import copy

from twisted.internet import defer
from twisted.logger import Logger

from ..core.xmpp.channel import Refusal
from . import pxe_storage as db
from .logic import pxe_menus as rules
from .logic.pxe_menus import MenuError

MENU_FIELDS = ("title", "timeout")


class PXEMenus:
    """Boot menus and PXE registrations over the master's ``store``.

    ``registry`` gives the MAC blacklist (``registry.blacklist``, reloaded on SIGHUP) and
    new machine ids (``registry.new_uuid``); ``origin_of(sender)`` names the imaging
    server an envelope comes from (``.relay``: ``master`` or a relay's name) or None.
    """

    log = Logger()

    def __init__(self, store, clock, registry, origin_of=None):
        self.store, self.clock, self.registry = store, clock, registry
        self.origin_of = origin_of

    # -- envelopes from medulla-pxe ------------------------------------------------------

    def on_menu(self, sender, envelope):
        """``pxe.menu`` {mac, uuid, server} -> {reason, machine, menu}."""
        data = _data(envelope)
        try:
            mac = rules.check_mac(data.get("mac"))
            smbios = rules.check_smbios_uuid(data.get("uuid"))
            server = self._server(sender, data)
        except MenuError as e:
            return defer.fail(_refusal(e))
        d = self.store.run(db.resolve, mac, smbios, server, self.registry.blacklist)
        d.addErrback(_as_refusal)
        return d

    def on_register(self, sender, envelope):
        """``pxe.register`` {mac, uuid, name, server} -> {machine, created}."""
        data = _data(envelope)
        try:
            mac = rules.check_mac(data.get("mac"))
            smbios = rules.check_smbios_uuid(data.get("uuid"))
            name = rules.check_machine_name(data.get("name"))
            server = self._server(sender, data)
        except MenuError as e:
            return defer.fail(_refusal(e))
        d = self.register(mac, smbios, name, server)
        d.addErrback(_as_refusal)
        return d

    def _server(self, sender, data):
        server = rules.check_server(data.get("server"))
        origin = self.origin_of(sender) if self.origin_of is not None else None
        if origin is not None and origin.relay != server:
            # A relay speaks for its own site only.
            raise MenuError(403, "server-mismatch",
                            f"{sender.full()} is imaging server {origin.relay!r}, not {server!r}")
        return server

    @defer.inlineCallbacks
    def register(self, mac, smbios, name, server):
        now = self.clock.seconds()
        machine, created = yield self.store.run(
            db.register_machine, self.registry.new_uuid(), mac, smbios, name, server, now,
            self.registry.blacklist)
        if created:
            self.log.info("machine {name} ({uuid}) registered by PXE on {server}: MAC {mac}, "
                          "SMBIOS UUID {smbios}", name=name, uuid=machine["uuid"],
                          server=server, mac=mac, smbios=smbios or "(none)")
        return {"machine": machine, "created": created}

    # -- admin -----------------------------------------------------------------------------

    def list_menus(self):
        return self.store.run(db.list_menus)

    def show_menu(self, name):
        name = rules.check_existing_name(name)

        def show(conn):
            menu = db.require_menu(conn, name)
            menu["assigned"] = [f"{k}:{t}" if t else k for k, t in conn.execute(
                "SELECT kind, target FROM pxe_assignments WHERE menu = ? ORDER BY kind, target",
                (name,))]
            return menu
        return self.store.run(show)

    def create_menu(self, name, title, timeout=10, items=None, copy_from=None):
        """A new shared menu: from ``items`` (at least one service), or a copy of
        ``copy_from``."""
        name = rules.check_menu_name(name)
        title = rules.check_title(title, "title") if title is not None else None
        timeout = rules.check_timeout(timeout)

        def create(conn):
            if db.get_menu(conn, name) is not None:
                raise MenuError(409, "exists", f"menu {name!r} already exists")
            if copy_from is not None:
                source = db.require_menu(conn, rules.check_existing_name(copy_from))
                new_items = source["items"]
            else:
                new_items = [rules.make_item(i) for i in (items or [{"service": "continue"}])]
            menu = {"name": name, "title": title or name, "timeout": timeout,
                    "items": _with_one_default(new_items)}
            return db.save_menu(conn, menu, self.clock.seconds())
        return self._change(create, "created menu {name}", name=name)

    def delete_menu(self, name):
        return self._change(lambda c: db.delete_menu(c, rules.check_existing_name(name)),
                            "deleted menu {name}", name=name)

    def set_menu(self, name, fields):
        """Change the title and/or timeout of a menu."""
        unknown = set(fields) - set(MENU_FIELDS)
        if unknown or not fields:
            raise MenuError(400, "bad-field", f"menu fields: {', '.join(MENU_FIELDS)}")

        def change(conn, menu):
            if "title" in fields:
                menu["title"] = rules.check_title(fields["title"])
            if "timeout" in fields:
                menu["timeout"] = rules.check_timeout(fields["timeout"])
        return self._edit(name, change, "changed menu {name}: {fields}", fields=sorted(fields))

    def add_item(self, name, fields, position=None):
        item = rules.make_item(fields)

        def change(conn, menu):
            items = menu["items"]
            at = len(items) if position is None else _position(position, len(items) + 1)
            items.insert(at, item)
            for flag in ("default", "default_on_wol"):
                if item[flag]:
                    rules.set_exclusive(items, at, flag)
        return self._edit(name, change, "menu {name}: added item {label}", label=item["label"])

    def remove_item(self, name, label):
        def change(conn, menu):
            menu["items"].pop(_find(menu, label))
        return self._edit(name, change, "menu {name}: removed item {label}", label=label)

    def move_item(self, name, label, position):
        def change(conn, menu):
            items = menu["items"]
            item = items.pop(_find(menu, label))
            items.insert(_position(position, len(items) + 1), item)
        return self._edit(name, change, "menu {name}: moved item {label} to {position}",
                          label=label, position=position)

    def set_item(self, name, label, fields):
        """Change an item: its title, boot definition or flags (default, visible,
        default_on_wol)."""
        allowed = ("title", "boot", "default", "visible", "default_on_wol")
        unknown = set(fields) - set(allowed)
        if unknown or not fields:
            raise MenuError(400, "bad-field", f"item fields you may set: {', '.join(allowed)}")

        def change(conn, menu):
            index = _find(menu, label)
            item = menu["items"][index]
            merged = {k: item[k] for k in ("label", "kind", "title", "default", "visible",
                                           "default_on_wol")}
            if item["kind"] == "service":
                merged["service"] = item["service"]
            if item["boot"]:
                merged["boot"] = item["boot"]
            merged.update(fields)
            new = rules.make_item(merged)
            menu["items"][index] = new
            for flag in ("default", "default_on_wol"):
                if fields.get(flag) is True:
                    rules.set_exclusive(menu["items"], index, flag)
        return self._edit(name, change, "menu {name}: changed item {label}: {fields}",
                          label=label, fields=sorted(fields))

    def assign(self, kind, target, menu_name):
        """Give ``menu_name`` to a MAC, UUID or group (as its own copy), to an imaging
        server (its default menu) or to unknown machines (``registration``)."""
        target = rules.check_target(kind, target)
        menu_name = rules.check_existing_name(menu_name)

        def assign(conn):
            menu = db.require_menu(conn, menu_name)
            if kind in rules.COPY_KINDS:
                return db.copy_menu(conn, menu_name, kind, target, self.clock.seconds())
            if menu["owner"]:
                raise MenuError(409, "own-menu", f"{menu_name!r} is the own menu of "
                                f"{menu['owner']}; copy it to a new menu first")
            db.set_assignment(conn, kind, target, menu_name)
            return menu
        return self._change(assign, "assigned menu {menu} to {kind} {target}",
                            menu=menu_name, kind=kind, target=target)

    def unassign(self, kind, target):
        target = rules.check_target(kind, target)
        if kind == "registration":
            raise MenuError(409, "required", "unknown machines always get a registration "
                            "menu: assign another one instead")
        return self._change(lambda c: {"menu": db.remove_assignment(c, kind, target)},
                            "unassigned {kind} {target}", kind=kind, target=target)

    def reset(self, kind, target):
        """Copy again the menu an entity's own menu was copied from (the seeds' "reset":
        how changes to the default menu reach machines and groups)."""
        target = rules.check_target(kind, target)
        if kind not in rules.COPY_KINDS:
            raise MenuError(400, "bad-field", f"only {', '.join(rules.COPY_KINDS)} have "
                            "their own copy to reset")

        def reset(conn):
            own = db.get_menu(conn, rules.copy_name(kind, target))
            if own is None:
                raise MenuError(404, "not-found", f"{kind} {target} has no menu of its own")
            source = own["source"]
            if db.get_menu(conn, source) is None:
                raise MenuError(409, "source-gone", f"menu {source!r} it was copied from "
                                "no longer exists; assign another menu")
            return db.copy_menu(conn, source, kind, target, self.clock.seconds())
        return self._change(reset, "reset the menu of {kind} {target}", kind=kind,
                            target=target)

    def reset_from(self, source):
        """Reset every entity copy of ``source``; returns the names reset."""
        source = rules.check_existing_name(source)

        def reset_all(conn):
            db.require_menu(conn, source)
            rows = conn.execute("SELECT a.kind, a.target FROM pxe_assignments a JOIN pxe_menus m "
                                "ON m.name = a.menu WHERE m.owner != '' AND m.source = ? "
                                "ORDER BY a.kind, a.target", (source,)).fetchall()
            now = self.clock.seconds()
            return {"reset": [db.copy_menu(conn, source, k, t, now)["name"] for k, t in rows]}
        return self._change(reset_all, "reset every copy of menu {source}", source=source)

    # -- plumbing --------------------------------------------------------------------------

    def _edit(self, name, change, message, **fields):
        name = rules.check_existing_name(name)

        def edit(conn):
            menu = copy.deepcopy(db.require_menu(conn, name))
            change(conn, menu)
            return db.save_menu(conn, menu, self.clock.seconds())
        return self._change(edit, message, name=name, **fields)

    def _change(self, fn, message, **fields):
        d = self.store.run(fn)
        d.addCallback(_logged, self.log, "PXE: " + message, fields)
        return d


def _logged(result, log, message, fields):
    log.info(message, **fields)
    return result


def _with_one_default(items):
    items = copy.deepcopy(list(items))
    if items and not any(i["default"] for i in items):
        target = rules.default_item({"items": items})
        if target is not None:
            target["default"] = True
    return items


def _find(menu, label):
    for index, item in enumerate(menu["items"]):
        if item["label"] == label:
            return index
    raise MenuError(404, "not-found", f"menu {menu['name']!r} has no item {str(label)[:40]!r}")


def _position(value, count):
    """A 1-based position from the API (1 = first) as a list index."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= count:
        raise MenuError(400, "bad-field", f"position: from 1 to {count}")
    return value - 1


def _data(envelope):
    return envelope.data if isinstance(envelope.data, dict) else {}


def _refusal(error):
    return Refusal(error.code, error.error, error.message)


def _as_refusal(failure):
    failure.trap(MenuError)
    return defer.fail(_refusal(failure.value))
