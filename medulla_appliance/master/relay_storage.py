"""Queries on the relays table (migration 3 of storage.MIGRATIONS): plain functions of a
DB-API connection, run by Store.run in one transaction each."""

import json

PUBLIC_COLUMNS = ("name", "jid", "key_fingerprint", "daemons", "version", "package_url",
                  "status", "status_interval", "last_seen", "enrolled_at", "updated_at")
_SELECT = "SELECT %s FROM relays" % ", ".join(PUBLIC_COLUMNS)


class KeyMismatch(Exception):
    """The relay is enrolled with another key (the message gives the pinned fingerprint)."""


def relay_dict(row):
    """The API's view of a relays row (the public key itself stays inside)."""
    relay = dict(zip(PUBLIC_COLUMNS, row, strict=True))
    relay["daemons"] = json.loads(relay["daemons"])
    relay["status"] = json.loads(relay["status"])
    return relay


def index_rows(conn):
    """(name, public key text, package URL, last_seen, status_interval) of every relay."""
    return [tuple(r) for r in conn.execute(
        "SELECT name, public_key, package_url, last_seen, status_interval FROM relays")]


def save_registration(conn, name, jid, public_key, fingerprint, daemon, now):
    """Enrol relay `name` (pinning `public_key`) or record another daemon of it.

    Raises KeyMismatch when the relay is enrolled with another key: checked here, in the
    transaction, so two daemons enrolling at once cannot both pin their key. Returns
    True when this registration pinned the key.
    """
    row = conn.execute("SELECT public_key, key_fingerprint, daemons FROM relays "
                       "WHERE name = ?", (name,)).fetchone()
    if row is not None and row["public_key"] and row["public_key"] != public_key:
        raise KeyMismatch("relay %s is enrolled with key %s" % (name, row["key_fingerprint"]))
    daemons = json.loads(row["daemons"]) if row is not None else {}
    daemons[daemon["name"]] = {k: v for k, v in daemon.items() if k != "name"}
    if row is None:
        conn.execute(
            "INSERT INTO relays (name, jid, public_key, key_fingerprint, daemons, version, "
            "last_seen, enrolled_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, jid, public_key, fingerprint, json.dumps(daemons), daemon["version"],
             now, now, now))
        return True
    pinned = not row["public_key"]
    conn.execute("UPDATE relays SET jid = ?, public_key = ?, key_fingerprint = ?, "
                 "daemons = ?, version = ?, last_seen = ?, updated_at = ? WHERE name = ?",
                 (jid, public_key, fingerprint, json.dumps(daemons), daemon["version"], now,
                  now, name))
    if pinned:  # enrolled again after a key reset: a new enrolment date
        conn.execute("UPDATE relays SET enrolled_at = ? WHERE name = ?", (now, name))
    return pinned


def save_status(conn, name, status, interval, package_url, now, *, create_jid=None):
    """Record a relay's status; False for an unknown relay, unless `create_jid` is given
    (the master host's own relay, which never enrols, gets its row on first report)."""
    values = (json.dumps(status), interval, package_url, now, now, name)
    changed = conn.execute("UPDATE relays SET status = ?, status_interval = ?, "
                           "package_url = ?, last_seen = ?, updated_at = ? WHERE name = ?",
                           values).rowcount
    if changed or create_jid is None:
        return bool(changed)
    conn.execute("INSERT INTO relays (name, jid, status, status_interval, package_url, "
                 "last_seen, enrolled_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (name, create_jid, json.dumps(status), interval, package_url, now, now, now))
    return True


def reset_key(conn, name, now):
    """Forget a relay's pinned key; False when there is no such relay."""
    return bool(conn.execute("UPDATE relays SET public_key = '', key_fingerprint = '', "
                             "updated_at = ? WHERE name = ?", (now, name)).rowcount)


def list_relays(conn):
    return [relay_dict(r) for r in conn.execute(_SELECT + " ORDER BY name")]


def get_relay(conn, name):
    """One relay and the packages complete on it (what package.synced said), or None."""
    row = conn.execute(_SELECT + " WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    relay = relay_dict(row)
    relay["packages"] = [dict(r) for r in conn.execute(
        "SELECT package_id, descriptor_sha256, ts FROM packages_on_relays WHERE relay = ? "
        "ORDER BY package_id", (name,))]
    return relay
