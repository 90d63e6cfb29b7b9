"""Queries on the deployment tables (migration 2 of storage.MIGRATIONS): plain
functions of a DB-API connection, run by Store.run in one transaction each."""

from .logic import scheduler

OUTPUT_LIMIT = 64 * 1024
_TARGET_COLUMNS = ("uuid", "state", "attempts", "session", "step", "detail", "updated_at")


def create(conn, dep, uuids, now):
    """Insert deployment `dep` (a dict of its columns) with `uuids` as targets, pending."""
    conn.execute("INSERT INTO deployments (%s) VALUES (%s)" % (
        ", ".join(dep), ", ".join("?" * len(dep))), tuple(dep.values()))
    conn.executemany(
        "INSERT INTO deployment_targets (deployment_id, uuid, state, updated_at) "
        "VALUES (?, ?, ?, ?)", [(dep["id"], u, scheduler.PENDING, now) for u in uuids])
    for uuid in uuids:
        log(conn, dep["id"], uuid, now, "", "state", scheduler.PENDING)


def log(conn, dep_id, uuid, ts, session, kind, label, ok=None, ret=None, output=""):
    conn.execute("INSERT INTO deployment_log (deployment_id, uuid, ts, session, kind, label, "
                 "ok, ret, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (dep_id, uuid, ts, session, kind, label,
                  None if ok is None else int(ok), ret, output[-OUTPUT_LIMIT:]))


def active(conn, now):
    """Deployments with targets not in a final state, or with a failed transfer that
    may still be retried (retries left, inside the window, not stopped)."""
    final = ",".join("?" * len(scheduler.FINAL))
    rows = conn.execute(
        "SELECT DISTINCT d.* FROM deployments d JOIN deployment_targets t "
        "ON t.deployment_id = d.id WHERE t.state NOT IN (%s) "
        "OR (t.state = ? AND t.attempts <= d.retries AND d.stopped = 0 AND d.end_at > ?)"
        % final, (*scheduler.FINAL, scheduler.TRANSFER_FAILED, now)).fetchall()
    return [dict(r) for r in rows]


def active_for_package(conn, package_id, now):
    return sorted(d["id"] for d in active(conn, now) if d["package_id"] == package_id)


def targets(conn, dep_id):
    rows = conn.execute(
        "SELECT t.%s, m.relay, m.hostname FROM deployment_targets t JOIN machines m "
        "ON m.uuid = t.uuid WHERE t.deployment_id = ? ORDER BY m.hostname"
        % ", t.".join(_TARGET_COLUMNS), (dep_id,)).fetchall()
    return [dict(r) for r in rows]


def set_state(conn, dep_id, uuid, state, now, *, session=None, attempt=False, step="",
              detail=""):
    sets = ["state = ?", "updated_at = ?", "step = ?", "detail = ?"]
    args = [state, now, step, detail[-OUTPUT_LIMIT:]]
    if session is not None:
        sets.append("session = ?")
        args.append(session)
    if attempt:
        sets.append("attempts = attempts + 1")
    conn.execute("UPDATE deployment_targets SET %s WHERE deployment_id = ? AND uuid = ?"
                 % ", ".join(sets), (*args, dep_id, uuid))
    log(conn, dep_id, uuid, now, session or "", "state", state, output=detail)


def target_by_session(conn, session):
    row = conn.execute("SELECT deployment_id, uuid, state, session FROM deployment_targets "
                       "WHERE session = ?", (session,)).fetchone()
    return dict(row) if row else None


def target_of_old_session(conn, session):
    """The target a session of an earlier attempt named (`DEP:UUID:ATTEMPT`, as
    deployments._start builds it), if that session was ever started (the audit log has
    it); None for a session nobody was given."""
    dep_id, _, rest = session.partition(":")
    uuid, _, attempt = rest.rpartition(":")
    if not (dep_id and uuid and attempt.isdigit()):
        return None
    started = conn.execute(
        "SELECT 1 FROM deployment_log WHERE deployment_id = ? AND uuid = ? AND session = ? "
        "LIMIT 1", (dep_id, uuid, session)).fetchone()
    if started is None:
        return None
    row = conn.execute("SELECT deployment_id, uuid, state, session FROM deployment_targets "
                       "WHERE deployment_id = ? AND uuid = ?", (dep_id, uuid)).fetchone()
    return dict(row) if row else None


def stop(conn, dep_id):
    return conn.execute("UPDATE deployments SET stopped = 1 WHERE id = ?", (dep_id,)).rowcount


def restart(conn, dep_id, now):
    """Failed, stopped or expired targets start over (success stays)."""
    conn.execute("UPDATE deployments SET stopped = 0 WHERE id = ?", (dep_id,))
    redo = [r[0] for r in conn.execute(
        "SELECT uuid FROM deployment_targets WHERE deployment_id = ? AND state != ? "
        "AND state != ?", (dep_id, scheduler.SUCCESS, scheduler.STARTED))]
    for uuid in redo:
        conn.execute("UPDATE deployment_targets SET state = ?, attempts = 0, session = '', "
                     "updated_at = ? WHERE deployment_id = ? AND uuid = ?",
                     (scheduler.PENDING, now, dep_id, uuid))
        log(conn, dep_id, uuid, now, "", "state", scheduler.PENDING, output="restarted")
    return len(redo)


def get(conn, dep_id):
    row = conn.execute("SELECT * FROM deployments WHERE id = ?", (dep_id,)).fetchone()
    return dict(row) if row else None


def summary(conn, limit=100):
    """Newest deployments with their targets counted by state."""
    deps = [dict(r) for r in conn.execute(
        "SELECT * FROM deployments ORDER BY created_at DESC LIMIT ?", (limit,))]
    for dep in deps:
        dep["states"] = dict(conn.execute(
            "SELECT state, COUNT(*) FROM deployment_targets WHERE deployment_id = ? "
            "GROUP BY state", (dep["id"],)).fetchall())
    return deps


def audit(conn, dep_id, uuid):
    rows = conn.execute("SELECT ts, session, kind, label, ok, ret, output FROM deployment_log "
                        "WHERE deployment_id = ? AND uuid = ? ORDER BY id", (dep_id, uuid))
    return [dict(r) for r in rows]


def relays_with(conn, package_id, descriptor_sha256):
    return {r[0] for r in conn.execute(
        "SELECT relay FROM packages_on_relays WHERE package_id = ? AND descriptor_sha256 = ?",
        (package_id, descriptor_sha256))}


def packages_synced(conn, relay, complete, gone, snapshot, now):
    """What a relay holds: a snapshot replaces its list, a change adds and removes."""
    if snapshot:
        conn.execute("DELETE FROM packages_on_relays WHERE relay = ?", (relay,))
    conn.executemany("DELETE FROM packages_on_relays WHERE relay = ? AND package_id = ?",
                     [(relay, package_id) for package_id, _ in gone])
    conn.executemany("INSERT OR REPLACE INTO packages_on_relays VALUES (?, ?, ?, ?)",
                     [(relay, package_id, sha, now) for package_id, sha in complete])


def running_per_relay(conn):
    return dict(conn.execute(
        "SELECT m.relay, COUNT(*) FROM deployment_targets t JOIN machines m "
        "ON m.uuid = t.uuid WHERE t.state = ? GROUP BY m.relay", (scheduler.STARTED,)))


# -- saved groups (migration 6: saved_groups; members in machine_groups) ----------------

def group_members(conn, name):
    """The uuids in group `name`, or None when there is no such group."""
    if conn.execute("SELECT 1 FROM saved_groups WHERE name = ?", (name,)).fetchone() is None:
        return None
    return [r[0] for r in conn.execute(
        "SELECT uuid FROM machine_groups WHERE name = ? ORDER BY uuid", (name,))]


def groups(conn):
    """Every group with how many machines it holds and how many of them are online."""
    rows = conn.execute(
        "SELECT g.name, g.created_at, g.updated_at, COUNT(m.uuid) AS machines, "
        "COALESCE(SUM(m.online), 0) AS online FROM saved_groups g "
        "LEFT JOIN machine_groups x ON x.name = g.name LEFT JOIN machines m ON m.uuid = x.uuid "
        "GROUP BY g.name ORDER BY g.name")
    return [dict(r) for r in rows]


def group(conn, name):
    """Group `name` and its machines (uuid, hostname, jid, online, relay), or None."""
    row = conn.execute("SELECT name, created_at, updated_at FROM saved_groups WHERE name = ?",
                       (name,)).fetchone()
    if row is None:
        return None
    machines = conn.execute(
        "SELECT m.uuid, m.hostname, m.jid, m.online, m.relay FROM machine_groups x "
        "JOIN machines m ON m.uuid = x.uuid WHERE x.name = ? ORDER BY m.hostname, m.uuid",
        (name,))
    return dict(row, machines=[dict(m, online=bool(m["online"])) for m in machines])


def create_group(conn, name, uuids, now, replace):
    """Make group `name` hold exactly `uuids`: "created", "replaced", or "exists" (and
    nothing changed) when it exists and `replace` is false."""
    exists = conn.execute("SELECT 1 FROM saved_groups WHERE name = ?", (name,)).fetchone()
    if exists and not replace:
        return "exists"
    if exists:
        conn.execute("UPDATE saved_groups SET updated_at = ? WHERE name = ?", (now, name))
    else:
        conn.execute("INSERT INTO saved_groups VALUES (?, ?, ?)", (name, now, now))
    conn.execute("DELETE FROM machine_groups WHERE name = ?", (name,))
    conn.executemany("INSERT INTO machine_groups VALUES (?, ?)", [(name, u) for u in uuids])
    return "replaced" if exists else "created"


def change_group(conn, name, add, remove, now):
    """Add `add` and remove `remove` (uuids) from group `name`: (added, removed, size), or
    None when there is no such group."""
    if group_members(conn, name) is None:
        return None
    added = sum(conn.execute("INSERT OR IGNORE INTO machine_groups VALUES (?, ?)",
                             (name, u)).rowcount for u in add)
    removed = sum(conn.execute("DELETE FROM machine_groups WHERE name = ? AND uuid = ?",
                               (name, u)).rowcount for u in remove)
    conn.execute("UPDATE saved_groups SET updated_at = ? WHERE name = ?", (now, name))
    size = conn.execute("SELECT COUNT(*) FROM machine_groups WHERE name = ?",
                        (name,)).fetchone()[0]
    return added, removed, size


def delete_group(conn, name):
    """Forget group `name` (not its machines); False when there was none."""
    conn.execute("DELETE FROM machine_groups WHERE name = ?", (name,))
    return conn.execute("DELETE FROM saved_groups WHERE name = ?", (name,)).rowcount > 0
