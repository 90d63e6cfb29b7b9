"""Boot menus, their assignments and PXE registrations in the master's store: migration 4
and plain functions of a DB-API connection (run by ``Store.run``, one transaction each).

The migration ships two menus, as Medulla does: ``default`` (``continue``, the default,
and ``backup``, which boots Medulla's imaging system from the server's
``/downloads/davos/``) for every imaging server, and ``registration`` for unknown MACs,
whose default registers the machine under an automatic name so that no keyboard is
needed.
"""

import json

from ..core.store import Migration
from .logic import pxe_menus as rules

_DAVOS = "http://{server}/downloads/davos/"
_BACKUP_BOOT = json.dumps({"kernel": _DAVOS + "vmlinuz", "initrd": [_DAVOS + "initrd.img"],
                           "args": "boot=live fetch=" + _DAVOS + "fs.squashfs davos_action=backup"})


def _item_sql(menu, position, label, service, title, default=0, wol=0, boot="{}"):
    return ("INSERT INTO pxe_menu_items (menu, position, label, kind, service, title, boot, "
            "is_default, visible, default_on_wol) VALUES ('%s', %d, '%s', 'service', '%s', "
            "'%s', '%s', %d, 1, %d)" % (menu, position, label, service, title, boot, default, wol))


MIGRATION = Migration(4, "PXE boot menus, their items and assignments; PXE registrations", (
    """CREATE TABLE pxe_menus (
        name TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        timeout INTEGER NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        owner TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE pxe_menu_items (
        menu TEXT NOT NULL REFERENCES pxe_menus (name) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        label TEXT NOT NULL,
        kind TEXT NOT NULL,
        service TEXT NOT NULL DEFAULT '',
        title TEXT NOT NULL,
        boot TEXT NOT NULL DEFAULT '{}',
        is_default INTEGER NOT NULL DEFAULT 0,
        visible INTEGER NOT NULL DEFAULT 1,
        default_on_wol INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (menu, label))""",
    """CREATE TABLE pxe_assignments (
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        menu TEXT NOT NULL REFERENCES pxe_menus (name),
        PRIMARY KEY (kind, target))""",
    "CREATE INDEX pxe_assignments_menu ON pxe_assignments (menu)",
    """CREATE TABLE pxe_registrations (
        mac TEXT PRIMARY KEY,
        uuid TEXT NOT NULL REFERENCES machines (uuid) ON DELETE CASCADE,
        smbios_uuid TEXT NOT NULL DEFAULT '',
        server TEXT NOT NULL DEFAULT '',
        registered_at REAL NOT NULL)""",
    "CREATE INDEX pxe_registrations_smbios ON pxe_registrations (smbios_uuid)",
    "INSERT INTO pxe_menus (name, title, timeout) VALUES ('default', 'Medulla boot menu', 10)",
    _item_sql("default", 0, "continue", "continue", "Boot from the local disk", 1, 1),
    _item_sql("default", 1, "backup", "backup", "Backup this machine's disk".replace("'", "''"),
              boot=_BACKUP_BOOT),
    "INSERT INTO pxe_menus (name, title, timeout) "
    "VALUES ('registration', 'Medulla: unknown machine', 10)",
    _item_sql("registration", 0, "register", "register", "Register this machine", 1, 1),
    _item_sql("registration", 1, "register-ask", "register-ask",
              "Register this machine, choosing its name"),
    _item_sql("registration", 2, "continue", "continue", "Boot from the local disk"),
    "INSERT INTO pxe_assignments (kind, target, menu) VALUES ('registration', '', "
    "'registration')",
))

_ITEM_COLUMNS = "label, kind, service, title, boot, is_default, visible, default_on_wol"


def _item(row) -> dict:
    return {"label": row[0], "kind": row[1], "service": row[2], "title": row[3],
            "boot": json.loads(row[4]), "default": bool(row[5]), "visible": bool(row[6]),
            "default_on_wol": bool(row[7])}


def get_menu(conn, name):
    """The menu ``name`` with its items in order, or None."""
    row = conn.execute("SELECT name, title, timeout, source, owner, updated_at FROM pxe_menus "
                       "WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    items = conn.execute("SELECT %s FROM pxe_menu_items WHERE menu = ? ORDER BY position"
                         % _ITEM_COLUMNS, (name,)).fetchall()
    return {"name": row[0], "title": row[1], "timeout": row[2], "source": row[3],
            "owner": row[4], "updated_at": row[5], "items": [_item(i) for i in items]}


def require_menu(conn, name):
    menu = get_menu(conn, name)
    if menu is None:
        raise rules.MenuError(404, "not-found", f"no menu named {name[:80]!r}")
    return menu


def list_menus(conn):
    """Every menu with its item count and what it is assigned to."""
    assigned = {}
    for kind, target, menu in conn.execute("SELECT kind, target, menu FROM pxe_assignments "
                                           "ORDER BY kind, target"):
        assigned.setdefault(menu, []).append(f"{kind}:{target}" if target else kind)
    rows = conn.execute("SELECT m.name, m.title, m.timeout, m.source, m.owner, "
                        "(SELECT COUNT(*) FROM pxe_menu_items i WHERE i.menu = m.name) "
                        "FROM pxe_menus m ORDER BY m.owner != '', m.name")
    return [{"name": r[0], "title": r[1], "timeout": r[2], "source": r[3], "owner": r[4],
             "items": r[5], "assigned": assigned.get(r[0], [])} for r in rows]


def save_menu(conn, menu, now):
    """Write ``menu`` (header and all items) after checking its rules."""
    rules.check_menu(menu)
    conn.execute("INSERT INTO pxe_menus (name, title, timeout, source, owner, updated_at) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                 "title = excluded.title, timeout = excluded.timeout, "
                 "source = excluded.source, owner = excluded.owner, "
                 "updated_at = excluded.updated_at",
                 (menu["name"], menu["title"], menu["timeout"], menu.get("source", ""),
                  menu.get("owner", ""), now))
    conn.execute("DELETE FROM pxe_menu_items WHERE menu = ?", (menu["name"],))
    conn.executemany(
        "INSERT INTO pxe_menu_items (menu, position, %s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        % _ITEM_COLUMNS,
        [(menu["name"], n, i["label"], i["kind"], i["service"], i["title"],
          json.dumps(i["boot"], sort_keys=True), int(i["default"]), int(i["visible"]),
          int(i["default_on_wol"])) for n, i in enumerate(menu["items"])])
    return get_menu(conn, menu["name"])


def delete_menu(conn, name):
    menu = require_menu(conn, name)
    users = [f"{k}:{t}" if t else k for k, t in conn.execute(
        "SELECT kind, target FROM pxe_assignments WHERE menu = ? AND menu NOT IN "
        "(SELECT name FROM pxe_menus WHERE owner != '')", (name,))]
    if users:
        raise rules.MenuError(409, "in-use", f"menu {name!r} is assigned to {', '.join(users)}; "
                              "unassign it first")
    conn.execute("DELETE FROM pxe_assignments WHERE menu = ?", (name,))
    conn.execute("DELETE FROM pxe_menus WHERE name = ?", (name,))
    return menu


def assignment(conn, kind, target):
    row = conn.execute("SELECT menu FROM pxe_assignments WHERE kind = ? AND target = ?",
                       (kind, target)).fetchone()
    return row[0] if row else None


def set_assignment(conn, kind, target, menu):
    conn.execute("INSERT INTO pxe_assignments (kind, target, menu) VALUES (?, ?, ?) "
                 "ON CONFLICT (kind, target) DO UPDATE SET menu = excluded.menu",
                 (kind, target, menu))


def remove_assignment(conn, kind, target):
    """Forget the assignment; an entity's own copy goes with it. Returns the menu name."""
    menu = assignment(conn, kind, target)
    if menu is None:
        raise rules.MenuError(404, "not-found", f"nothing is assigned to {kind} {target}".rstrip())
    conn.execute("DELETE FROM pxe_assignments WHERE kind = ? AND target = ?", (kind, target))
    conn.execute("DELETE FROM pxe_menus WHERE name = ? AND owner = ?",
                 (menu, rules.copy_name(kind, target)))
    return menu


def copy_menu(conn, source, kind, target, now):
    """The entity's own menu, a copy of ``source``, assigned to it (replacing any)."""
    original = require_menu(conn, source)
    name = rules.copy_name(kind, target)
    copy = dict(original, name=name, source=source, owner=name)
    if original["owner"]:  # a copy of a copy remembers the shared menu it came from
        copy["source"] = original["source"] or source
    menu = save_menu(conn, copy, now)
    set_assignment(conn, kind, target, name)
    return menu


# -- machines --------------------------------------------------------------------------

def machine_by_mac(conn, mac):
    row = conn.execute("SELECT m.uuid, m.hostname FROM machine_macs x JOIN machines m "
                       "ON m.uuid = x.uuid WHERE x.mac = ?", (mac,)).fetchone()
    return {"uuid": row[0], "hostname": row[1]} if row else None


def machine_by_smbios(conn, smbios_uuid):
    row = conn.execute("SELECT m.uuid, m.hostname FROM pxe_registrations r JOIN machines m "
                       "ON m.uuid = r.uuid WHERE r.smbios_uuid = ? ORDER BY r.registered_at "
                       "DESC", (smbios_uuid,)).fetchone()
    return {"uuid": row[0], "hostname": row[1]} if row else None


def group_menus(conn, machine_uuid):
    """(group, menu) of the machine's groups that have a menu, by group name."""
    return [tuple(r) for r in conn.execute(
        "SELECT g.name, a.menu FROM machine_groups g JOIN pxe_assignments a "
        "ON a.kind = 'group' AND a.target = g.name WHERE g.uuid = ? ORDER BY g.name",
        (machine_uuid,))]


def resolve(conn, mac, smbios_uuid, server, blacklist):
    """The menu for a PXE client: ``{"reason", "machine", "menu": {...}}``."""
    mac_usable = mac not in blacklist
    machine = machine_by_mac(conn, mac) if mac_usable else None
    if machine is None and smbios_uuid:
        machine = machine_by_smbios(conn, smbios_uuid)
    own = (assignment(conn, "mac", mac) if mac_usable else None) or \
        (assignment(conn, "uuid", smbios_uuid) if smbios_uuid else None)
    name, reason = rules.decide(
        own=own, groups=group_menus(conn, machine["uuid"]) if machine else [],
        machine_known=machine is not None, mac_usable=mac_usable,
        server_menu=assignment(conn, "server", server),
        registration_menu=assignment(conn, "registration", ""))
    menu = get_menu(conn, name) or get_menu(conn, rules.DEFAULT_MENU)
    if menu is None:
        raise rules.MenuError(503, "no-menu", f"menu {name!r} is missing from the store")
    return {"reason": reason, "machine": machine, "menu": menu}


def register_machine(conn, new_uuid, mac, smbios_uuid, name, server, now, blacklist):
    """Create the machine a PXE client asked to register; an already known MAC (or
    SMBIOS UUID) answers its machine instead. Returns ``(machine, created)``."""
    if mac in blacklist:
        raise rules.MenuError(403, "blacklisted-mac",
                              f"{mac} is in blacklisted_mac_addresses: it cannot identify a "
                              "machine; register this machine by its agent instead")
    known = machine_by_mac(conn, mac) or (machine_by_smbios(conn, smbios_uuid)
                                          if smbios_uuid else None)
    if known is not None:
        return known, False
    taken = conn.execute("SELECT uuid FROM machines WHERE lower(hostname) = ?",
                         (name.lower(),)).fetchone()
    if taken is not None:
        raise rules.MenuError(409, "name-taken",
                              f"another machine is already named {name!r} ({taken[0]})")
    conn.execute("INSERT INTO machines (uuid, hostname, jid, macs, enrolled_at, updated_at) "
                 "VALUES (?, ?, '', ?, ?, ?)", (new_uuid, name, json.dumps([mac]), now, now))
    conn.execute("INSERT INTO machine_macs (mac, uuid) VALUES (?, ?)", (mac, new_uuid))
    conn.execute("INSERT INTO pxe_registrations (mac, uuid, smbios_uuid, server, registered_at) "
                 "VALUES (?, ?, ?, ?, ?)", (mac, new_uuid, smbios_uuid, server, now))
    # storage.add_event's row, written here: storage imports this module's migration.
    conn.execute("INSERT INTO machine_events (uuid, ts, event, detail) VALUES (?, ?, ?, ?)",
                 (new_uuid, now, "registered",
                  f"by PXE on {server}: MAC {mac}, SMBIOS UUID {smbios_uuid or '(none)'}; "
                  "not yet imaged (no agent)"))
    return {"uuid": new_uuid, "hostname": name}, True


def list_assignments(conn):
    """Every assignment: ``{"kind", "target", "menu"}``."""
    return [{"kind": k, "target": t, "menu": m} for k, t, m in conn.execute(
        "SELECT kind, target, menu FROM pxe_assignments ORDER BY kind, target")]
