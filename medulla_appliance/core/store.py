"""The embedded store: SQLite with versioned migrations, off the reactor thread.

Callers hand `Store.run` a plain function of a DB-API connection; it runs inside one
transaction on the store's own thread and the result comes back as a Deferred. Queries
are written with `?` placeholders and standard SQL so that a MariaDB backend can take the
same functions later (its `connect` would translate placeholders); no caller changes.
"""

import os
import sqlite3
from dataclasses import dataclass

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

SQLITE_PREFIX = "sqlite:"
BUSY_TIMEOUT_MS = 10_000


class StoreError(Exception):
    """The store cannot be opened or migrated; the message says which and why."""


@dataclass(frozen=True)
class Migration:
    """One schema step: `version` strictly increasing, `statements` run in order."""

    version: int
    description: str
    statements: tuple


def sqlite_path(url):
    """The file path of a `sqlite:/abs/path` (or `sqlite:///abs/path`) store URL."""
    if not url.startswith(SQLITE_PREFIX):
        raise StoreError("unsupported store URL %r: only sqlite:/path/to/file is "
                         "supported in this version" % url)
    path = url[len(SQLITE_PREFIX):]
    while path.startswith("//"):
        path = path[1:]
    if not path.startswith("/") and path != ":memory:":
        raise StoreError("store URL %r must name an absolute path" % url)
    return path


def connect_sqlite(path):
    """A connection in autocommit mode (we BEGIN ourselves) with WAL and foreign keys."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, never corrupt.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as e:
        raise StoreError("cannot open store %s: %s" % (path, e)) from e
    conn.row_factory = sqlite3.Row
    return conn


def transaction(conn, fn, *args, **kwargs):
    """Run fn(conn, ...) in one transaction: all of it or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kwargs)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def apply_migrations(conn, migrations):
    """Bring the schema to the newest version; returns the versions applied."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise StoreError("migrations must have strictly increasing versions")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                 "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                 "applied_at REAL NOT NULL)")
    current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
    if versions and current > versions[-1]:
        raise StoreError("the store's schema (version %d) is newer than this program "
                         "knows (%d): was it downgraded?" % (current, versions[-1]))
    applied = []
    for migration in migrations:
        if migration.version <= current:
            continue

        def step(c, m=migration):
            for statement in m.statements:
                c.execute(statement)
            c.execute("INSERT INTO schema_version VALUES (?, ?, strftime('%s','now'))",
                      (m.version, m.description))

        try:
            transaction(conn, step)
        except sqlite3.Error as e:
            raise StoreError("migration %d (%s) failed, nothing of it was applied: %s"
                             % (migration.version, migration.description, e)) from e
        applied.append(migration.version)
    return applied


class Store:
    """One database, one writer thread, Deferred results.

    `threaded=False` runs each call at once in the caller's thread (same SQLite, same
    transactions); unit tests use it to stay free of threads and the reactor.
    """

    log = Logger()

    def __init__(self, url, migrations, *, reactor=None, threaded=True):
        self.url = url
        self._conn = connect_sqlite(sqlite_path(url))
        self._reactor = reactor
        self._threaded = threaded
        self._pool = None
        applied = apply_migrations(self._conn, migrations)
        if applied:
            self.log.info("store {url} migrated to version {version}",
                          url=url, version=applied[-1])

    def run(self, fn, *args, **kwargs):
        """Deferred result of fn(conn, *args, **kwargs) run in one transaction."""
        if self._conn is None:
            return defer.fail(StoreError("the store %s is closed" % self.url))
        if not self._threaded:
            return defer.maybeDeferred(transaction, self._conn, fn, *args, **kwargs)
        if self._pool is None:
            # Started on first use, not at construction: a daemon that fails to start
            # must not be kept alive by an idle non-daemon thread.
            if self._reactor is None:
                from twisted.internet import reactor as global_reactor
                self._reactor = global_reactor
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="medulla-store")
            self._pool.start()
        return threads.deferToThreadPool(
            self._reactor, self._pool, transaction, self._conn, fn, *args, **kwargs)

    def close(self):
        """Finish queued work and close the database."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
