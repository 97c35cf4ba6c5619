"""The dispatcher's SQLite state, in a real database file under tmp_path."""

import sqlite3
import subprocess
import sys

import pytest

from superci import store as store_module
from superci.errors import StorageError
from superci.scheduler import Job
from superci.split import TestOutcome, TestResult
from superci.status import BuildStatus
from superci.store import MIGRATIONS, SCHEMA_VERSION, BuildRecord, RunnerRecord, Store

SHA_A = "a" * 40
SHA_B = "b" * 40
SHA_C = "c" * 40


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "superci.db"


@pytest.fixture
def store(path):
    s = Store(path)
    yield s
    s.close()


def test_add_build_stores_a_queued_build(store):
    record = store.add_build(SHA_A, "main", now=100.0)
    assert record == BuildRecord(record.id, SHA_A, "main", BuildStatus.QUEUED, 0, None, 100.0)
    assert store.get(record.id) == record
    assert store.get(record.id).runners == []


def test_build_ids_increase(store):
    ids = [store.add_build(sha, "main", now=1.0).id for sha in (SHA_A, SHA_B, SHA_C)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_get_of_an_unknown_id_is_none(store):
    assert store.get(12345) is None


def test_status_is_read_back_as_a_build_status(store):
    record = store.add_build(SHA_A, "main", now=1.0)
    assert type(store.get(record.id).status) is BuildStatus


#: Two commit ids that share their first nine characters, and one that sorts just after.
TWIN_1 = "abcdef012" + "1" * 31
TWIN_2 = "abcdef012" + "2" * 31
NEIGHBOUR = "abcdef013" + "0" * 31


def test_latest_by_prefix_gives_the_newest_build_of_each_matching_commit(store):
    old = store.add_build(TWIN_1, "main", now=1.0)
    neighbour = store.add_build(NEIGHBOUR, "main", now=2.0)
    twin_2 = store.add_build(TWIN_2, "feature/x", now=3.0)
    store.finish(old.id, BuildStatus.PASSED, now=4.0)
    rebuilt = store.add_build(TWIN_1, "main", now=5.0)

    newest_first = [rebuilt.id, twin_2.id, neighbour.id]
    assert [r.id for r in store.latest_by_prefix("abcdef0", 10)] == newest_first
    assert [r.id for r in store.latest_by_prefix("abcdef012", 10)] == newest_first[:2]
    assert [r.id for r in store.latest_by_prefix("abcdef012", 1)] == [rebuilt.id]
    assert [r.sha for r in store.latest_by_prefix("abcdef0122", 10)] == [TWIN_2]
    assert [r.sha for r in store.latest_by_prefix("abcdef013", 10)] == [NEIGHBOUR]
    assert [r.sha for r in store.latest_by_prefix(TWIN_2, 10)] == [TWIN_2]
    assert store.latest_by_prefix("abcdef01f", 10) == []
    assert store.latest_by_prefix("fffffff", 10) == []


def test_latest_on_branch_gives_the_newest_build_asked_for_on_it(store):
    store.add_build(SHA_A, "feature/x", now=1.0)
    newest = store.add_build(SHA_B, "feature/x", now=2.0)
    store.add_build(SHA_C, "main", now=3.0)
    assert store.latest_on_branch("feature/x") == newest
    assert store.latest_on_branch("feature") is None


def test_prefix_and_branch_lookups_use_indexes(store):
    def plan(sql: str, params: tuple) -> str:
        return " ".join(row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + sql, params))

    by_prefix = plan("SELECT max(id) FROM builds WHERE sha >= ? AND sha < ? GROUP BY sha",
                     ("abc", "abcg"))  # fmt: skip
    assert "INDEX builds_by_sha" in by_prefix and "SCAN" not in by_prefix
    by_branch = plan("SELECT id FROM builds WHERE branch = ? ORDER BY id DESC LIMIT 1", ("x",))
    assert "INDEX builds_by_branch" in by_branch and "SCAN" not in by_branch


def test_latest_for_gives_the_newest_build_of_a_commit(store):
    first = store.add_build(SHA_A, "main", now=1.0)
    store.add_build(SHA_B, "main", now=2.0)
    store.finish(first.id, BuildStatus.PASSED, now=3.0)
    rebuild = store.add_build(SHA_A, "release", now=4.0)
    latest = store.latest_for(SHA_A)
    assert latest.id == rebuild.id
    assert latest.branch == "release"
    assert latest.status is BuildStatus.QUEUED
    assert store.latest_for(SHA_C) is None


def test_mark_running_sets_attempt_runner_and_appends_to_runners(store):
    build = store.add_build(SHA_A, "main", now=1.0)
    store.mark_running(build.id, 1, "r1", now=2.0)
    record = store.get(build.id)
    assert (record.status, record.attempt, record.runner, record.started_at) == (
        BuildStatus.RUNNING, 1, "r1", 2.0,
    )  # fmt: skip
    assert record.runners == ["r1"]
    store.mark_queued(build.id, "runner r1 lost: connection closed")
    store.mark_running(build.id, 2, "r2", now=5.0)
    record = store.get(build.id)
    assert (record.attempt, record.runner, record.started_at) == (2, "r2", 5.0)
    assert record.runners == ["r1", "r2"]


def test_mark_running_touches_only_its_build(store):
    one = store.add_build(SHA_A, "main", now=1.0)
    two = store.add_build(SHA_B, "main", now=1.0)
    store.mark_running(one.id, 1, "r1", now=2.0)
    assert store.get(two.id) == two


def test_mark_queued_clears_the_runner_keeps_the_history_and_records_why(store):
    build = store.add_build(SHA_A, "main", now=1.0)
    store.mark_running(build.id, 1, "r1", now=2.0)
    store.mark_queued(build.id, "runner r1 lost: no heartbeat for 10.5s")
    record = store.get(build.id)
    assert record.status is BuildStatus.QUEUED
    assert record.runner is None
    assert record.attempt == 1
    assert record.runners == ["r1"]
    assert record.message == "runner r1 lost: no heartbeat for 10.5s"


def test_finish_records_status_time_and_message(store):
    build = store.add_build(SHA_A, "main", now=1.0)
    store.mark_running(build.id, 1, "r1", now=2.0)
    store.finish(build.id, BuildStatus.FAILED, now=9.5, message="2 tests failed")
    record = store.get(build.id)
    assert record.status is BuildStatus.FAILED
    assert record.finished_at == 9.5
    assert record.message == "2 tests failed"
    assert record.runner == "r1"


def test_unfinished_lists_queued_and_running_oldest_first(store):
    a = store.add_build(SHA_A, "main", now=1.0)
    b = store.add_build(SHA_B, "main", now=2.0)
    c = store.add_build(SHA_C, "main", now=3.0)
    d = store.add_build(SHA_A, "dev", now=4.0)
    store.mark_running(c.id, 1, "r1", now=5.0)
    store.mark_running(a.id, 1, "r2", now=5.0)
    store.finish(a.id, BuildStatus.PASSED, now=6.0)
    store.finish(b.id, BuildStatus.CANCELLED, now=6.0)
    unfinished = store.unfinished()
    assert [(r.id, r.status) for r in unfinished] == [
        (c.id, BuildStatus.RUNNING),
        (d.id, BuildStatus.QUEUED),
    ]


def test_recent_gives_the_newest_builds_newest_first(store):
    ids = [store.add_build(sha, "main", now=float(i)).id for i, sha in enumerate([SHA_A] * 5)]
    assert [r.id for r in store.recent(3)] == ids[::-1][:3]
    assert [r.id for r in store.recent(100)] == ids[::-1]


def test_record_becomes_the_schedulers_job(store):
    build = store.add_build(SHA_A, "feature/x", now=1.0)
    store.mark_running(build.id, 2, "r1", now=2.0)
    job = store.get(build.id).to_job()
    assert job == Job(build.id, SHA_A, "feature/x", BuildStatus.RUNNING, 2, "r1", ["r1"])


def test_queue_survives_closing_and_reopening_the_file(path):
    first = Store(path)
    queued = first.add_build(SHA_A, "main", now=1.0)
    running = first.add_build(SHA_B, "main", now=2.0)
    done = first.add_build(SHA_C, "main", now=3.0)
    first.mark_running(running.id, 1, "r1", now=4.0)
    first.finish(done.id, BuildStatus.PASSED, now=5.0)
    first.close()

    second = Store(path)
    try:
        assert [r.id for r in second.unfinished()] == [queued.id, running.id]
        assert second.get(running.id).runners == ["r1"]
        assert second.get(done.id).status is BuildStatus.PASSED
        assert second.add_build(SHA_A, "main", now=6.0).id > done.id
    finally:
        second.close()


def test_committed_builds_are_visible_to_another_connection_at_once(store, path):
    build = store.add_build(SHA_A, "main", now=1.0)
    other = sqlite3.connect(path)
    try:
        rows = other.execute("SELECT id, sha, status FROM builds").fetchall()
    finally:
        other.close()
    assert rows == [(build.id, SHA_A, "queued")]


def test_database_is_in_wal_mode_with_full_sync(store, path):
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_runner_seen_inserts_then_updates_keeping_first_seen(store, path):
    store.runner_seen("r1", "a.lan", 10, now=1.0)
    store.runner_seen("r1", "b.lan", 20, now=7.0)
    other = sqlite3.connect(path)
    try:
        rows = other.execute(
            "SELECT name, host, pid, first_seen, last_seen FROM runners"
        ).fetchall()
    finally:
        other.close()
    assert rows == [("r1", "b.lan", 20, 1.0, 7.0)]


def test_missing_parent_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "superci.db"
    Store(path).close()
    assert path.is_file()


def test_unwritable_location_gives_storage_error_naming_the_path(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    path = blocker / "superci.db"
    with pytest.raises(StorageError) as info:
        Store(path)
    assert str(path) in str(info.value)


def test_a_folder_in_place_of_the_database_gives_storage_error(tmp_path):
    with pytest.raises(StorageError) as info:
        Store(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_write_after_close_gives_storage_error(path):
    store = Store(path)
    store.close()
    with pytest.raises(StorageError) as info:
        store.add_build(SHA_A, "main", now=1.0)
    assert str(path) in str(info.value)


def test_finish_keeps_the_test_counts_of_the_build(store):
    build = store.add_build(SHA_A, "main", now=1.0)
    counts = {"run": 3, "passed": 1, "failed": 0, "errors": 2, "skipped": 0}
    store.finish(build.id, BuildStatus.FAILED, now=2.0, message="tests failed", tests=counts)
    assert store.get(build.id).tests == counts
    assert store.add_build(SHA_B, "main", now=3.0).tests == {}
    assert store.latest_for(SHA_B).tests == {}


#: The builds table as the first superci wrote it, before any column was added.
FIRST_SCHEMA = """
CREATE TABLE builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sha TEXT NOT NULL, branch TEXT NOT NULL,
    status TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, runner TEXT,
    runners TEXT NOT NULL DEFAULT '[]', queued_at REAL NOT NULL, started_at REAL,
    finished_at REAL, message TEXT NOT NULL DEFAULT ''
);
INSERT INTO builds (sha, branch, status, attempt, runner, runners, queued_at, started_at,
                    finished_at, message)
VALUES ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'main', 'passed', 1, 'r1', '["r1"]', 1.0,
        2.0, 3.0, 'tests passed (exit code 0)');
"""


def test_a_database_of_an_older_superci_gets_the_new_columns_and_keeps_its_builds(path):
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(FIRST_SCHEMA)
    old.close()

    store = Store(path)
    try:
        [record] = store.recent(10)
        assert (record.sha, record.status, record.runners, record.message) == (
            SHA_A, BuildStatus.PASSED, ["r1"], "tests passed (exit code 0)",
        )  # fmt: skip
        assert record.tests == {}
        store.finish(record.id, BuildStatus.FAILED, now=4.0, tests={"run": 1, "failed": 1})
        assert store.get(record.id).tests == {"run": 1, "failed": 1}
    finally:
        store.close()
    Store(path).close()  # opening it again adds nothing twice


RUNNERS_BEFORE_IDENTITIES = """
CREATE TABLE runners (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL
);
INSERT INTO runners VALUES ('r1', 'old.lan', 1, 1.0, 2.0);
"""


def test_runners_of_an_older_superci_get_an_identity_column_bound_at_their_next_join(path):
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(RUNNERS_BEFORE_IDENTITIES)
    old.close()
    store = Store(path)
    try:
        assert store.runner("r1") == RunnerRecord("r1", "old.lan", 2.0, None)
        store.runner_seen("r1", "new.lan", 5, 3.0, identity="d" * 64)
        store.runner_seen("r1", "new.lan", 6, 4.0)  # a later join keeps the identity
        assert store.runner("r1") == RunnerRecord("r1", "new.lan", 4.0, "d" * 64)
        assert store.forget_runner("r1") and store.runner("r1") is None
        assert not store.forget_runner("r1")
    finally:
        store.close()


#: The tables of the first release (commit 3ab5987), exactly as its store made them.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sha         TEXT NOT NULL,
    branch      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    runner      TEXT,
    runners     TEXT NOT NULL DEFAULT '[]',
    queued_at   REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    message     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS builds_by_sha ON builds (sha);
CREATE INDEX IF NOT EXISTS builds_unfinished ON builds (status)
    WHERE status IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS runners (
    name       TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL
);
"""


def _first_release_database(path):
    """A database as the first release left it: a finished, a running and a queued build,
    and a runner."""
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(FIRST_RELEASE_SCHEMA)
    old.executemany(
        "INSERT INTO builds (sha, branch, status, attempt, runner, runners, queued_at,"
        " started_at, finished_at, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (SHA_A, "main", "failed", 2, "r2", '["r1", "r2"]', 1.0, 2.0, 3.0, "tests failed"),
            (SHA_B, "feature/x", "running", 1, "r1", '["r1"]', 4.0, 5.0, None, ""),
            (SHA_C, "main", "queued", 0, None, "[]", 6.0, None, None, ""),
        ],
    )
    old.execute("INSERT INTO runners VALUES ('r1', 'old.lan', 7, 1.0, 5.0)")
    old.commit()
    old.close()


def _user_version(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_new_database_is_made_at_the_current_schema_version(path):
    Store(path).close()
    assert _user_version(path) == SCHEMA_VERSION


def test_a_database_of_the_first_release_is_migrated_keeping_every_row(path):
    _first_release_database(path)
    assert _user_version(path) == 0

    store = Store(path)
    try:
        assert _user_version(path) == SCHEMA_VERSION
        failed, running, queued = (store.latest_for(sha) for sha in (SHA_A, SHA_B, SHA_C))
        assert failed == BuildRecord(
            failed.id, SHA_A, "main", BuildStatus.FAILED, 2, "r2", 1.0, 2.0, 3.0,
            "tests failed", ["r1", "r2"], {}, 0,
        )  # fmt: skip
        assert (running.status, running.runner, running.runners) == (
            BuildStatus.RUNNING, "r1", ["r1"],
        )  # fmt: skip
        assert [b.id for b in store.unfinished()] == [running.id, queued.id]
        assert store.runner("r1") == RunnerRecord("r1", "old.lan", 5.0, None)
        assert store.latest_on_branch("feature/x") == running  # the index added since
        # The migrated columns take writes like those of a new database.
        store.mark_queued(running.id, "runner lost")
        store.finish(queued.id, BuildStatus.PASSED, now=8.0, tests={"run": 1, "passed": 1})
        assert store.get(running.id).lost == 1
        assert store.get(queued.id).tests == {"run": 1, "passed": 1}
    finally:
        store.close()
    reopened = Store(path)  # a second start migrates nothing again
    try:
        assert len(reopened.recent(10)) == 3 and _user_version(path) == SCHEMA_VERSION
    finally:
        reopened.close()


def test_a_database_made_before_versions_with_some_columns_added_is_migrated(path):
    """Version 0 is any database from before versions, whatever columns it already has."""
    _first_release_database(path)
    partial = sqlite3.connect(path)
    partial.execute("ALTER TABLE builds ADD COLUMN tests TEXT NOT NULL DEFAULT '{}'")
    partial.execute("UPDATE builds SET tests = '{\"run\": 2}' WHERE sha = ?", (SHA_A,))
    partial.commit()
    partial.close()

    store = Store(path)
    try:
        assert store.latest_for(SHA_A).tests == {"run": 2}
        assert store.latest_for(SHA_A).lost == 0
        store.runner_seen("r1", "new.lan", 8, 9.0, identity="e" * 64)
        assert store.runner("r1").identity == "e" * 64
    finally:
        store.close()
    assert _user_version(path) == SCHEMA_VERSION


def _set_version(path, version, written_by=None):
    db = sqlite3.connect(path)
    if written_by is not None:
        db.execute("UPDATE about SET value = ? WHERE key = 'written_by'", (written_by,))
    else:
        db.execute("DELETE FROM about")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


def test_a_database_of_a_newer_schema_is_refused_naming_the_superci_it_needs(path):
    store = Store(path)
    store.add_build(SHA_A, "main", now=1.0)
    store.close()
    _set_version(path, SCHEMA_VERSION + 1, written_by="9.1.0")

    with pytest.raises(StorageError) as info:
        Store(path)
    message = str(info.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"up to {SCHEMA_VERSION}" in message
    assert "superci 9.1.0 or newer" in message
    assert _user_version(path) == SCHEMA_VERSION + 1  # left as it was
    db = sqlite3.connect(path)
    assert db.execute("SELECT sha FROM builds").fetchall() == [(SHA_A,)]
    db.close()


def test_a_newer_schema_of_an_unknown_superci_is_refused_naming_the_schema_it_needs(path):
    Store(path).close()
    _set_version(path, SCHEMA_VERSION + 3)
    with pytest.raises(StorageError, match=f"a superci that reads schema {SCHEMA_VERSION + 3}"):
        Store(path)


def test_the_dispatcher_refuses_a_newer_database_in_one_line_and_exits_1(tmp_path, path):
    Store(path).close()
    _set_version(path, SCHEMA_VERSION + 1, written_by="9.1.0")
    done = subprocess.run(
        [sys.executable, "-m", "superci", "dispatcher", "--port", "0",
         "--results", str(tmp_path / "results"), "--state", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "superci 9.1.0 or newer" in done.stderr
    assert "Traceback" not in done.stderr


def _add_column(name):
    def migration(db):
        db.execute(f"ALTER TABLE builds ADD COLUMN {name} TEXT NOT NULL DEFAULT ''")

    return migration


def test_a_later_migration_runs_once_on_a_database_of_the_version_before(path, monkeypatch):
    store = Store(path)
    build = store.add_build(SHA_A, "main", now=1.0)
    store.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, _add_column("note")])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)

    Store(path).close()
    Store(path).close()  # a second ALTER of the same column would fail
    db = sqlite3.connect(path)
    assert db.execute("SELECT id, note FROM builds").fetchall() == [(build.id, "")]
    db.close()
    assert _user_version(path) == SCHEMA_VERSION + 1


def test_a_migration_that_fails_leaves_the_database_at_its_version(path, monkeypatch):
    def half_done(db):
        _add_column("note")(db)
        db.execute("SELECT * FROM no_such_table")

    Store(path).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, half_done])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StorageError, match="no_such_table"):
        Store(path)
    assert _user_version(path) == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert "note" not in {row[1] for row in db.execute("PRAGMA table_info(builds)")}
    db.close()


def test_a_write_that_fails_inside_a_transaction_rolls_back_every_write_of_it(store, path):
    kept = store.add_build(SHA_A, "main", now=1.0)
    with pytest.raises(StorageError, match="NOT NULL"):
        with store.transaction():
            store.mark_running(kept.id, 1, "r1", now=2.0)
            store.add_build(SHA_B, "main", now=3.0)
            store.runner_seen("r1", None, 7, now=4.0)  # host is NOT NULL: this write fails

    assert store.get(kept.id) == kept  # still queued, never marked running
    assert store.latest_for(SHA_B) is None and store.runner("r1") is None
    other = sqlite3.connect(path)  # and on disk
    assert other.execute("SELECT sha, status FROM builds").fetchall() == [(SHA_A, "queued")]
    other.close()
    with store.transaction():  # the store is not left inside the failed transaction
        store.finish(kept.id, BuildStatus.PASSED, now=5.0)
    assert store.get(kept.id).status == BuildStatus.PASSED


def test_an_error_raised_inside_a_transaction_rolls_it_back_and_is_raised_as_it_is(store):
    class Interrupted(Exception):
        pass

    with pytest.raises(Interrupted), store.transaction():
        store.add_build(SHA_A, "main", now=1.0)
        with store.transaction():  # nested: joins the outer one, and goes with it
            store.add_build(SHA_B, "main", now=2.0)
        raise Interrupted
    assert store.recent(10) == []


def test_a_builds_needs_are_stored_and_come_back_with_its_job_after_reopening(path):
    first = Store(path)
    needing = first.add_build(SHA_A, "main", now=1.0, needs={"gpu": "true", "os": "linux"})
    plain = first.add_build(SHA_B, "main", now=2.0)
    assert needing.needs == {"gpu": "true", "os": "linux"}
    first.close()

    second = Store(path)
    try:
        jobs = {r.id: r.to_job() for r in second.unfinished()}
        assert jobs[needing.id].needs == {"gpu": "true", "os": "linux"}
        assert jobs[plain.id].needs == {}
    finally:
        second.close()


def test_needs_learned_from_a_runner_replace_those_stored_and_a_requeue_keeps_them(store):
    build = store.add_build(SHA_A, "main", now=1.0)
    store.mark_running(build.id, 1, "r1", now=2.0)
    store.mark_queued(build.id, "given back", lost=False, needs={"gpu": "true"})
    store.mark_running(build.id, 2, "r2", now=3.0)
    store.mark_queued(build.id, "runner lost")
    assert store.get(build.id).needs == {"gpu": "true"}


def test_a_database_from_before_needs_is_migrated_and_its_builds_need_nothing(path):
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)  # schema version 1, as the release before needs wrote it
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO builds (sha, branch, status, queued_at) VALUES (?, 'main', 'queued', 1.0)",
        (SHA_A,),
    )
    db.commit()
    db.close()

    store = Store(path)
    try:
        assert _user_version(path) == SCHEMA_VERSION
        [queued] = store.unfinished()
        assert queued.sha == SHA_A and queued.to_job().needs == {}
    finally:
        store.close()


def test_builds_stored_before_jobs_are_rounds_of_one_default_job(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    for migrate in MIGRATIONS[:3]:  # the schema before jobs
        migrate(db)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO builds (sha, branch, status, queued_at)"
               " VALUES (?, 'main', 'queued', 1.0)", (SHA_A,))  # fmt: skip
    db.close()

    store = Store(path)
    try:
        [old] = store.unfinished()
        assert (old.job, old.round, old.after) == ("default", old.id, [])
        assert old.to_job().round == old.id
        first = store.add_build(SHA_B, "main", 2.0, job="lint")
        second = store.add_build(SHA_B, "main", 2.0, job="docs", round=first.id, after=["lint"])
        assert [(r.job, r.round, r.after) for r in store.round_of(first.id)] == [
            ("lint", first.id, []), ("docs", first.id, ["lint"])
        ]  # fmt: skip
        assert store.latest_round(SHA_B) == store.round_of(second.round)
        assert store.latest_round(SHA_A) == [old]
    finally:
        store.close()


# --- test durations (a split's timings) ----------------------------------------------


def test_test_durations_start_unknown_and_take_their_first_measurement(store):
    assert store.test_durations(["t::a", "t::b"]) == {}
    store.record_test_durations({"t::a": 2.0, "t::b": 0.5}, now=10.0)
    assert store.test_durations(["t::a", "t::b", "t::c"]) == {"t::a": 2.0, "t::b": 0.5}


def test_test_durations_are_a_moving_average_kept_across_restarts(path):
    first = Store(path)
    first.record_test_durations({"t::a": 2.0, "t::b": 1.0}, now=10.0)
    first.record_test_durations({"t::a": 4.0}, now=20.0, weight=0.5)
    first.close()
    reopened = Store(path)
    try:
        assert reopened.test_durations(["t::a", "t::b"]) == {"t::a": 3.0, "t::b": 1.0}
    finally:
        reopened.close()


def test_a_negative_duration_is_not_recorded(store):
    store.record_test_durations({"t::a": -1.0, "t::b": 1.0}, now=10.0)
    assert store.test_durations(["t::a", "t::b"]) == {"t::b": 1.0}


def test_durations_of_more_tests_than_one_query_takes_are_all_read(store):
    many = {f"t::{i}": float(i) for i in range(store_module.IDS_PER_QUERY * 2 + 3)}
    store.record_test_durations(many, now=1.0)
    assert store.test_durations(many) == many


# --- a split's kept results ------------------------------------------------------------


def test_a_split_keeps_each_tests_first_result_until_its_build_finishes(path):
    first = Store(path)
    build = first.add_build(SHA_A, "main", now=1.0)
    other = first.add_build(SHA_B, "main", now=1.0)
    failed = TestResult("t::b", TestOutcome.FAILED, 0.5, "assert 1 == 2", "r1.1")
    first.keep_split_results(build.id, [TestResult("t::a", TestOutcome.PASSED, 1.0, "", "r1.1"),
                                        failed])  # fmt: skip
    first.keep_split_results(build.id, [TestResult("t::b", TestOutcome.PASSED, 9.0, "", "r2.1")])
    first.keep_split_results(other.id, [TestResult("t::c", TestOutcome.PASSED, 1.0, "", "r2.1")])
    first.close()
    reopened = Store(path)  # kept across a restart of the dispatcher
    try:
        kept = reopened.kept_split_results(build.id, ["t::a", "t::b", "t::c", "t::d"])
        assert set(kept) == {"t::a", "t::b"} and kept["t::b"] == failed
        reopened.finish(build.id, BuildStatus.PASSED, now=2.0)
        assert reopened.kept_split_results(build.id, ["t::a", "t::b"]) == {}
        assert set(reopened.kept_split_results(other.id, ["t::c"])) == {"t::c"}
    finally:
        reopened.close()


def test_a_running_build_stored_before_kept_split_results_finishes_after_the_migration(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    before = MIGRATIONS.index(store_module._add_split_results)
    for migrate in MIGRATIONS[:before]:  # the schema before split results were kept
        migrate(db)
    db.execute(f"PRAGMA user_version = {before}")
    db.execute("INSERT INTO builds (sha, branch, status, queued_at)"
               " VALUES (?, 'main', 'running', 1.0)", (SHA_A,))  # fmt: skip
    db.close()

    store = Store(path)
    try:
        assert _user_version(path) == SCHEMA_VERSION
        [running] = store.unfinished()
        assert store.kept_split_results(running.id, ["t::a"]) == {}
        store.keep_split_results(running.id, [TestResult("t::a", TestOutcome.PASSED, 1.0)])
        store.finish(running.id, BuildStatus.PASSED, now=2.0)
        assert store.get(running.id).status == BuildStatus.PASSED
    finally:
        store.close()


def test_a_build_keeps_split_results_up_to_its_limit(store):
    build = store.add_build(SHA_A, "main", now=1.0)
    three = [TestResult(f"t::{i}", TestOutcome.PASSED, 1.0, "", "r1.1") for i in range(3)]
    assert store.keep_split_results(build.id, three[:2], limit=2)
    assert not store.keep_split_results(build.id, three[2:], limit=2)
    assert set(store.kept_split_results(build.id, ["t::0", "t::1", "t::2"])) == {"t::0", "t::1"}
