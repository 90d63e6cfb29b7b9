"""core.store: versioned migrations, one transaction per call, errors that say why."""

import os
import shutil
import tempfile
import threading

import pytest
from twisted.internet import defer
from twisted.trial import unittest as trial

from medulla_appliance.core.store import Migration, Store, StoreError, sqlite_path
from medulla_appliance.master import storage
from tests.unit.deferreds import failure_of, result_of

NOTES_V1 = Migration(1, "notes", ("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)",))
NOTES_V2 = Migration(2, "note tags", ("ALTER TABLE notes ADD COLUMN tag TEXT",))


def versions(store):
    return result_of(store.run(
        lambda c: [tuple(r) for r in c.execute(
            "SELECT version, description FROM schema_version ORDER BY version")]))


@pytest.fixture
def url(tmp_path):
    return "sqlite:" + str(tmp_path / "m.sqlite")


def test_migrations_are_applied_once_and_recorded(url):
    store = Store(url, storage.MIGRATIONS, threaded=False)
    assert versions(store) == [(m.version, m.description) for m in storage.MIGRATIONS]
    tables = result_of(store.run(lambda c: {r[0] for r in c.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}))
    assert {"machines", "machine_macs", "machine_events", "schema_version",
            "deployments", "deployment_targets", "deployment_log"} <= tables
    store.close()


def test_reopening_applies_nothing(url):
    Store(url, (NOTES_V1,), threaded=False).close()
    # Re-running CREATE TABLE would fail: opening again must not try.
    store = Store(url, (NOTES_V1,), threaded=False)
    assert versions(store) == [(1, "notes")]
    store.close()


def test_a_new_migration_is_applied_on_top_of_an_old_store(url):
    store = Store(url, (NOTES_V1,), threaded=False)
    result_of(store.run(lambda c: c.execute("INSERT INTO notes (text) VALUES ('kept')")))
    store.close()
    store = Store(url, (NOTES_V1, NOTES_V2), threaded=False)
    assert versions(store) == [(1, "notes"), (2, "note tags")]
    assert result_of(store.run(lambda c: [tuple(r) for r in c.execute(
        "SELECT text, tag FROM notes")])) == [("kept", None)]
    store.close()


def test_a_store_newer_than_the_program_is_refused(url):
    Store(url, (NOTES_V1, NOTES_V2), threaded=False).close()
    with pytest.raises(StoreError, match=r"newer than this program knows \(1\)"):
        Store(url, (NOTES_V1,), threaded=False)


@pytest.mark.parametrize("migrations", [(NOTES_V2, NOTES_V1), (NOTES_V1, NOTES_V1)])
def test_migrations_out_of_order_are_refused(url, migrations):
    with pytest.raises(StoreError, match="strictly increasing"):
        Store(url, migrations, threaded=False)


def test_a_failing_migration_leaves_nothing_behind(url):
    broken = Migration(2, "broken", ("CREATE TABLE half (x)", "THIS IS NOT SQL"))
    with pytest.raises(StoreError, match=r"migration 2 \(broken\) failed, nothing of it"):
        Store(url, (NOTES_V1, broken), threaded=False)
    store = Store(url, (NOTES_V1,), threaded=False)
    assert versions(store) == [(1, "notes")]
    assert result_of(store.run(lambda c: c.execute(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0])) == 0
    store.close()


def test_a_failing_function_rolls_its_transaction_back(url):
    store = Store(url, (NOTES_V1,), threaded=False)

    def half_done(conn):
        conn.execute("INSERT INTO notes (text) VALUES ('half')")
        raise RuntimeError("disk on fire")

    error = failure_of(store.run(half_done))
    assert isinstance(error, RuntimeError)
    assert result_of(store.run(lambda c: c.execute(
        "SELECT COUNT(*) FROM notes").fetchone()[0])) == 0
    # The connection is usable afterwards: no transaction was left open.
    result_of(store.run(lambda c: c.execute("INSERT INTO notes (text) VALUES ('ok')")))
    assert result_of(store.run(lambda c: c.execute(
        "SELECT text FROM notes").fetchone()[0])) == "ok"
    store.close()


def test_run_passes_arguments_and_returns_the_result(url):
    store = Store(url, (NOTES_V1,), threaded=False)

    def add(conn, text, *, tag=None):
        conn.execute("INSERT INTO notes (text) VALUES (?)", (text + (tag or ""),))
        return conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0]

    assert result_of(store.run(add, "a", tag="!")) == 1
    assert result_of(store.run(lambda c: c.execute("SELECT text FROM notes").fetchone()[0])) \
        == "a!"
    store.close()


def test_data_survives_reopening(url):
    store = Store(url, (NOTES_V1,), threaded=False)
    result_of(store.run(lambda c: c.execute("INSERT INTO notes (text) VALUES ('x')")))
    store.close()
    store = Store(url, (NOTES_V1,), threaded=False)
    assert result_of(store.run(lambda c: c.execute("SELECT text FROM notes").fetchone()[0])) \
        == "x"
    store.close()


def test_missing_parent_directories_are_created(tmp_path):
    store = Store("sqlite:" + str(tmp_path / "a" / "b" / "m.sqlite"), (NOTES_V1,),
                  threaded=False)
    assert (tmp_path / "a" / "b" / "m.sqlite").exists()
    store.close()


@pytest.mark.parametrize("bad", [
    "mysql://medulla@localhost/medulla", "postgresql:///medulla", "", "/var/lib/m.sqlite",
    "sqlite:relative/m.sqlite", "sqlite:m.sqlite", "SQLITE:/tmp/x",
])
def test_bad_urls_are_refused(bad):
    with pytest.raises(StoreError, match="URL"):
        Store(bad, (NOTES_V1,), threaded=False)


@pytest.mark.parametrize("url, path", [
    ("sqlite:/var/lib/medulla/m.sqlite", "/var/lib/medulla/m.sqlite"),
    ("sqlite:///var/lib/medulla/m.sqlite", "/var/lib/medulla/m.sqlite"),
    ("sqlite:////var/lib/medulla/m.sqlite", "/var/lib/medulla/m.sqlite"),
    ("sqlite::memory:", ":memory:"),
])
def test_sqlite_urls_name_a_path(url, path):
    assert sqlite_path(url) == path


def test_a_path_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError, match="cannot open store"):
        Store("sqlite:" + str(tmp_path / "dir.sqlite"), (NOTES_V1,), threaded=False)



def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    (tmp_path / "m.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store("sqlite:" + str(tmp_path / "m.sqlite"), (NOTES_V1,), threaded=False)


def test_in_memory_store_works():
    store = Store("sqlite::memory:", (NOTES_V1,), threaded=False)
    assert versions(store) == [(1, "notes")]
    store.close()


class ThreadedStoreTests(trial.TestCase):
    """The default, threaded store with the real reactor: results come back as Deferreds."""

    def setUp(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        self.store = Store("sqlite:" + os.path.join(directory, "m.sqlite"), (NOTES_V1,))
        self.addCleanup(self.store.close)

    @defer.inlineCallbacks
    def test_calls_run_in_order_off_the_reactor_thread(self):
        main = threading.get_ident()

        def add(conn, text):
            conn.execute("INSERT INTO notes (text) VALUES (?)", (text,))
            return threading.get_ident()

        threads = yield defer.gatherResults([self.store.run(add, str(i)) for i in range(20)])
        texts = yield self.store.run(
            lambda c: [r[0] for r in c.execute("SELECT text FROM notes ORDER BY id")])
        self.assertEqual(texts, [str(i) for i in range(20)])
        self.assertNotIn(main, threads)

    @defer.inlineCallbacks
    def test_a_failing_function_rolls_back_and_errbacks(self):
        def half_done(conn):
            conn.execute("INSERT INTO notes (text) VALUES ('half')")
            raise ValueError("nope")

        with self.assertRaises(ValueError):
            yield self.store.run(half_done)
        count = yield self.store.run(lambda c: c.execute(
            "SELECT COUNT(*) FROM notes").fetchone()[0])
        self.assertEqual(count, 0)


def test_run_after_close_fails_cleanly(tmp_path):
    store = Store("sqlite:" + str(tmp_path / "m.sqlite"), (), threaded=False)
    store.close()
    store.close()  # twice is fine
    caught = []
    store.run(lambda c: 1).addErrback(caught.append)
    assert len(caught) == 1 and caught[0].check(StoreError)
    assert "closed" in caught[0].getErrorMessage()


def test_an_older_store_migrates_and_keeps_its_machines(url):
    old = Store(url, storage.MIGRATIONS[:1], threaded=False)
    result_of(old.run(lambda c: c.execute(
        "INSERT INTO machines (uuid, hostname, jid, enrolled_at, updated_at) "
        "VALUES ('m-1', 'pc01', 'pc01.abc@d', 1, 1)")))
    old.close()
    new = Store(url, storage.MIGRATIONS, threaded=False)
    assert [v for v, _ in versions(new)] == [m.version for m in storage.MIGRATIONS]
    assert result_of(new.run(lambda c: c.execute(
        "SELECT hostname FROM machines").fetchall()))[0][0] == "pc01"
    new.close()
