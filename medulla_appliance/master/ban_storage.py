"""Queries on the bans table (migration 5 of storage.MIGRATIONS): what medulla-guard on
each host (the master host itself, or a relay) says is banned there. Plain functions of
a DB-API connection, run by Store.run in one transaction each."""

from ..core.store import Migration

MIGRATION = Migration(5, "bans reported by medulla-guard on the master host and relays", (
    """CREATE TABLE bans (
        origin TEXT NOT NULL,
        address TEXT NOT NULL,
        jail TEXT NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        banned_at REAL NOT NULL,
        until REAL NOT NULL,
        manual INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (origin, address))""",
    "CREATE INDEX bans_until ON bans (until)",
))

_COLUMNS = ("origin", "address", "jail", "failures", "banned_at", "until", "manual",
            "updated_at")


def record(conn, origin, bans, snapshot, now):
    """Store ``bans`` (validated dicts) of ``origin``; with ``snapshot`` they replace all
    that origin's bans. Bans that ran out, of every origin, are dropped on the way."""
    conn.execute("DELETE FROM bans WHERE until <= ?", (now,))
    if snapshot:
        conn.execute("DELETE FROM bans WHERE origin = ?", (origin,))
    conn.executemany(
        "INSERT OR REPLACE INTO bans (%s) VALUES (%s)" % (", ".join(_COLUMNS),
                                                          ", ".join("?" * len(_COLUMNS))),
        [(origin, b["address"], b["jail"], b["failures"], b["banned_at"], b["until"],
          int(b["manual"]), now) for b in bans])


def remove(conn, origin, addresses, now):
    """Lift the bans of ``addresses`` on ``origin``; returns how many were listed."""
    conn.execute("DELETE FROM bans WHERE until <= ?", (now,))
    removed = 0
    for address in addresses:
        removed += conn.execute("DELETE FROM bans WHERE origin = ? AND address = ?",
                                (origin, address)).rowcount
    return removed


def active(conn, now, origin=None):
    """The bans still running at ``now`` (all hosts, or ``origin``'s), soonest end first."""
    query = "SELECT %s FROM bans WHERE until > ?" % ", ".join(_COLUMNS)
    args = [now]
    if origin is not None:
        query += " AND origin = ?"
        args.append(origin)
    rows = conn.execute(query + " ORDER BY until, origin, address", args).fetchall()
    bans = []
    for row in rows:
        ban = dict(zip(_COLUMNS, row, strict=True))
        ban["host"] = ban.pop("origin")
        ban["manual"] = bool(ban["manual"])
        bans.append(ban)
    return bans
