"""The master's tables and the queries on them: plain functions of a DB-API connection,
run by `core.store.Store.run` inside one transaction each."""

import json

from ..core.store import Migration
from . import ban_storage, pxe_storage

MIGRATIONS = (
    Migration(1, "machines, their identity MACs and their history", (
        """CREATE TABLE machines (
            uuid TEXT PRIMARY KEY,
            hostname TEXT NOT NULL,
            jid TEXT NOT NULL,
            resource TEXT NOT NULL DEFAULT '',
            macs TEXT NOT NULL DEFAULT '[]',
            ips TEXT NOT NULL DEFAULT '[]',
            os TEXT NOT NULL DEFAULT '',
            agent_version TEXT NOT NULL DEFAULT '',
            inventory_tag TEXT NOT NULL DEFAULT '',
            services TEXT NOT NULL DEFAULT '[]',
            relay TEXT NOT NULL DEFAULT '',
            public_key TEXT NOT NULL DEFAULT '',
            key_fingerprint TEXT NOT NULL DEFAULT '',
            online INTEGER NOT NULL DEFAULT 0,
            last_seen REAL,
            enrolled_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
        "CREATE INDEX machines_hostname ON machines (hostname)",
        "CREATE INDEX machines_jid ON machines (jid)",
        "CREATE INDEX machines_fingerprint ON machines (key_fingerprint)",
        """CREATE TABLE machine_macs (
            mac TEXT PRIMARY KEY,
            uuid TEXT NOT NULL REFERENCES machines (uuid) ON DELETE CASCADE)""",
        """CREATE TABLE machine_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uuid TEXT NOT NULL REFERENCES machines (uuid) ON DELETE CASCADE,
            ts REAL NOT NULL,
            event TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX machine_events_uuid_ts ON machine_events (uuid, ts)",
    )),
    Migration(2, "deployments, their targets and audit log; packages on relays; groups", (
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            package_id TEXT NOT NULL,
            package_name TEXT NOT NULL DEFAULT '',
            package_version TEXT NOT NULL DEFAULT '',
            descriptor_sha256 TEXT NOT NULL,
            sequence TEXT NOT NULL DEFAULT 'install',
            start_at REAL NOT NULL,
            end_at REAL NOT NULL,
            max_per_relay INTEGER NOT NULL,
            retries INTEGER NOT NULL,
            stopped INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL)""",
        """CREATE TABLE deployment_targets (
            deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
            uuid TEXT NOT NULL REFERENCES machines (uuid) ON DELETE CASCADE,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            session TEXT NOT NULL DEFAULT '',
            step TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            PRIMARY KEY (deployment_id, uuid))""",
        "CREATE INDEX deployment_targets_session ON deployment_targets (session)",
        """CREATE TABLE deployment_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
            uuid TEXT NOT NULL,
            ts REAL NOT NULL,
            session TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            ok INTEGER,
            ret INTEGER,
            output TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX deployment_log_target ON deployment_log (deployment_id, uuid, id)",
        """CREATE TABLE packages_on_relays (
            relay TEXT NOT NULL,
            package_id TEXT NOT NULL,
            descriptor_sha256 TEXT NOT NULL,
            ts REAL NOT NULL,
            PRIMARY KEY (relay, package_id))""",
        """CREATE TABLE machine_groups (
            name TEXT NOT NULL,
            uuid TEXT NOT NULL REFERENCES machines (uuid) ON DELETE CASCADE,
            PRIMARY KEY (name, uuid))""",
    )),
    Migration(3, "relays: their pinned keys, daemons and last status", (
        # Queries in relay_storage.py; "online" is decided from last_seen when read.
        """CREATE TABLE relays (
            name TEXT PRIMARY KEY,
            jid TEXT NOT NULL,
            public_key TEXT NOT NULL DEFAULT '',
            key_fingerprint TEXT NOT NULL DEFAULT '',
            daemons TEXT NOT NULL DEFAULT '{}',
            version TEXT NOT NULL DEFAULT '',
            package_url TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT '{}',
            status_interval REAL,
            last_seen REAL,
            enrolled_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
    )),
    pxe_storage.MIGRATION,  # 4: PXE boot menus and registrations (queries there)
    ban_storage.MIGRATION,  # 5: bans reported by medulla-guard (queries there)
    Migration(6, "saved groups of machines, which may be empty", (
        # Queries in deploy_storage.py; members stay in machine_groups (migration 2).
        """CREATE TABLE saved_groups (
            name TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
        "INSERT INTO saved_groups SELECT DISTINCT name, 0, 0 FROM machine_groups",
    )),
)

PUBLIC_COLUMNS = ("uuid", "hostname", "jid", "resource", "macs", "ips", "os", "agent_version",
                  "inventory_tag", "services", "relay", "key_fingerprint", "online",
                  "last_seen", "enrolled_at")
_SELECT = "SELECT %s FROM machines" % ", ".join(PUBLIC_COLUMNS)


def machine_dict(row):
    """The API's view of a machine row."""
    m = dict(zip(PUBLIC_COLUMNS, row, strict=True))
    for key in ("macs", "ips", "services"):
        m[key] = json.loads(m[key])
    m["online"] = bool(m["online"])
    m["jid"] = "%s/%s" % (m["jid"], m["resource"]) if m["resource"] else m["jid"]
    del m["resource"]
    return m


def index_rows(conn):
    """(uuid, bare jid, key fingerprint, online) of every machine, to build the index."""
    return [tuple(r) for r in conn.execute(
        "SELECT uuid, jid, key_fingerprint, online FROM machines")]


def by_fingerprint(conn, fingerprint):
    row = conn.execute("SELECT uuid, hostname, key_fingerprint FROM machines "
                       "WHERE key_fingerprint = ?", (fingerprint,)).fetchone()
    return dict(row) if row else None


def by_macs(conn, macs):
    if not macs:
        return []
    rows = conn.execute(
        "SELECT DISTINCT m.uuid, m.hostname, m.key_fingerprint FROM machine_macs x "
        "JOIN machines m ON m.uuid = x.uuid WHERE x.mac IN (%s)" % ",".join("?" * len(macs)),
        tuple(macs)).fetchall()
    return [dict(r) for r in rows]


def add_event(conn, uuid, ts, event, detail=""):
    conn.execute("INSERT INTO machine_events (uuid, ts, event, detail) VALUES (?, ?, ?, ?)",
                 (uuid, ts, event, detail[:1000]))


def save_registration(conn, uuid, is_new, facts, fields, identity_macs, now):
    """Insert or update a machine from a registration; its identity MACs follow it."""
    values = {
        "hostname": facts.hostname, "macs": json.dumps(list(facts.macs)),
        "ips": json.dumps(list(facts.ips)), "os": facts.os,
        "agent_version": facts.agent_version, "inventory_tag": facts.inventory_tag,
        "services": json.dumps(list(facts.services)), "public_key": facts.public_key,
        "updated_at": now, **fields}
    if is_new:
        values.update(uuid=uuid, enrolled_at=now)
        conn.execute("INSERT INTO machines (%s) VALUES (%s)" % (
            ", ".join(values), ", ".join("?" * len(values))), tuple(values.values()))
    else:
        conn.execute("UPDATE machines SET %s WHERE uuid = ?" % ", ".join(
            "%s = ?" % k for k in values), (*values.values(), uuid))
    conn.execute("DELETE FROM machine_macs WHERE uuid = ?", (uuid,))
    conn.executemany("INSERT OR REPLACE INTO machine_macs (mac, uuid) VALUES (?, ?)",
                     [(mac, uuid) for mac in identity_macs])


def set_online(conn, uuid, online, ts, detail, resource=None):
    """Record a presence transition and its history line."""
    if resource is None:
        conn.execute("UPDATE machines SET online = ?, last_seen = ? WHERE uuid = ?",
                     (int(online), ts, uuid))
    else:
        conn.execute("UPDATE machines SET online = ?, last_seen = ?, resource = ? "
                     "WHERE uuid = ?", (int(online), ts, resource, uuid))
    add_event(conn, uuid, ts, "online" if online else "offline", detail)


def reset_key(conn, uuid, ts):
    conn.execute("UPDATE machines SET key_fingerprint = '', public_key = '' WHERE uuid = ?",
                 (uuid,))
    add_event(conn, uuid, ts, "key-reset", "the next enrolment pins a new key")


def list_machines(conn, online=None):
    if online is None:
        rows = conn.execute(_SELECT + " ORDER BY hostname, uuid")
    else:
        rows = conn.execute(_SELECT + " WHERE online = ? ORDER BY hostname, uuid", (int(online),))
    return [machine_dict(r) for r in rows]


def find_machines(conn, name):
    """Machines whose hostname (case-insensitive), uuid or bare/full JID is `name`."""
    bare = name.split("/", 1)[0].lower()
    rows = conn.execute(_SELECT + " WHERE lower(hostname) = ? OR uuid = ? OR jid = ? "
                        "ORDER BY hostname, uuid", (name.lower(), name, bare))
    return [machine_dict(r) for r in rows]


def history(conn, uuid, limit):
    rows = conn.execute("SELECT ts, event, detail FROM machine_events WHERE uuid = ? "
                        "ORDER BY id DESC LIMIT ?", (uuid, limit))
    return [dict(r) for r in rows]


def counts(conn):
    total, online = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(online), 0) FROM machines").fetchone()
    return {"total": total, "online": online, "offline": total - online}
