"""The dispatcher's durable state in SQLite: builds, their attempts, the runners seen.

Every change is its own committed transaction in WAL mode with ``synchronous=FULL``,
so what the dispatcher acknowledged survives a SIGKILL or a power cut, and a restarted
dispatcher reads its queue back with :meth:`Store.unfinished`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superci import __version__, defaults
from superci.errors import StorageError
from superci.jobs import DEFAULT_JOB
from superci.scheduler import Job
from superci.split import TestOutcome, TestResult, updated_durations
from superci.status import BuildStatus

log = logging.getLogger(__name__)

#: The tables of schema version 1. Frozen: a later change is a new migration.
SCHEMA_1 = """
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
    message     TEXT NOT NULL DEFAULT '',
    tests       TEXT NOT NULL DEFAULT '{}',
    lost        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS builds_by_sha ON builds (sha);
CREATE INDEX IF NOT EXISTS builds_by_branch ON builds (branch);
CREATE INDEX IF NOT EXISTS builds_unfinished ON builds (status)
    WHERE status IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS runners (
    name       TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    identity   TEXT
);
CREATE TABLE IF NOT EXISTS about (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: Columns that superci added to ``builds`` before schema versions existed, as (name, type
#: and default): a version-0 database may lack any of them, so each is added by name.
ADDED_BUILD_COLUMNS: list[tuple[str, str]] = [
    ("tests", "TEXT NOT NULL DEFAULT '{}'"),  # the test counts of a finished build, JSON
    ("lost", "INTEGER NOT NULL DEFAULT 0"),  # runners lost while they held it
]
#: Columns added to ``runners`` before schema versions existed, in the same way.
ADDED_RUNNER_COLUMNS: list[tuple[str, str]] = [
    ("identity", "TEXT"),  # SHA-256 of the runner's secret (superci.identity), hex
]
_ADDED_COLUMNS = {"builds": ADDED_BUILD_COLUMNS, "runners": ADDED_RUNNER_COLUMNS}


def _statements(script: str) -> list[str]:
    """The statements of a script, to run one by one inside a transaction (sqlite3's
    ``executescript`` would commit first)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _to_version_1(db: sqlite3.Connection) -> None:
    """From an empty file, or from any database an unversioned superci made (whatever
    columns it has): make what is missing, keep every row."""
    for statement in _statements(SCHEMA_1):
        db.execute(statement)
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, definition in columns:
            if name not in have:
                log.info("adding column %s to the %s table", name, table)
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _to_version_2(db: sqlite3.Connection) -> None:
    """The commit's subject and author name, as its submitter or runner said them (NULL:
    nobody has yet; builds stored before keep NULL)."""
    db.execute("ALTER TABLE builds ADD COLUMN subject TEXT")
    db.execute("ALTER TABLE builds ADD COLUMN author TEXT")


def _to_version_3(db: sqlite3.Connection) -> None:
    """The runner labels each build needs (JSON object; see superci.labels): a queued
    build waits for a runner that offers them, also after a restart."""
    db.execute("ALTER TABLE builds ADD COLUMN needs TEXT NOT NULL DEFAULT '{}'")


def _add_jobs(db: sqlite3.Connection) -> None:
    """A commit's several jobs (see superci.jobs): each build row is one job of a *round*
    (the jobs one submission or rebuild made), named by its job key, with the names of
    the jobs it runs after (JSON list). Rows stored before are rounds of one default job
    (``round_id`` NULL: the round is the build itself)."""
    db.execute(f"ALTER TABLE builds ADD COLUMN job TEXT NOT NULL DEFAULT '{DEFAULT_JOB}'")
    db.execute("ALTER TABLE builds ADD COLUMN round_id INTEGER")
    db.execute("ALTER TABLE builds ADD COLUMN after_jobs TEXT NOT NULL DEFAULT '[]'")
    db.execute("CREATE INDEX IF NOT EXISTS builds_by_round ON builds (round_id)")


def _add_test_durations(db: sqlite3.Connection) -> None:
    """Each test id's duration, a moving average over the builds that ran it (see
    superci.split.updated_durations): a split hands the longest tests out first."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS test_durations (test TEXT PRIMARY KEY,"
        " seconds REAL NOT NULL, updated REAL NOT NULL)"
    )


def _add_split_results(db: sqlite3.Connection) -> None:
    """The results a running split build recorded so far (see superci.split): should its
    runner be lost, the next attempt runs only the tests without one. Gone with the
    build's end."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS split_results (build_id INTEGER NOT NULL,"
        " test TEXT NOT NULL, outcome TEXT NOT NULL, seconds REAL NOT NULL,"
        " message TEXT NOT NULL, participant TEXT NOT NULL, PRIMARY KEY (build_id, test))"
    )


#: Split results one build keeps at most (a suite of that many tests is beyond any split's
#: use of them; a runner that sends more is not believed).
MAX_KEPT_PER_BUILD = 100_000

#: Builds of named jobs looked at per commit sought by :meth:`Store.commits_with_jobs`.
ROWS_PER_COMMIT = 8

#: Test ids asked for in one query (SQLite allows at least 999 parameters).
IDS_PER_QUERY = 500


def _in_chunks(tests: Iterable[str]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Distinct test ids in chunks one query takes, each with its ``?, ?...`` marks."""
    wanted = list(dict.fromkeys(tests))
    for start in range(0, len(wanted), IDS_PER_QUERY):
        chunk = tuple(wanted[start : start + IDS_PER_QUERY])
        yield chunk, ", ".join("?" * len(chunk))


#: ``MIGRATIONS[n]`` brings a database from schema version n to n + 1, in one transaction.
#: A new one is appended here, never edited once released.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _to_version_1,
    _to_version_2,
    _to_version_3,
    _add_jobs,
    _add_test_durations,
    _add_split_results,
]
#: The schema version this superci writes (``PRAGMA user_version``); 0 is an empty file or
#: a database made before versions existed.
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class RunnerRecord:
    """One row of ``runners``: a name that registered, and the digest of its identity."""

    name: str
    host: str
    last_seen: float
    identity: str | None  # None: registered before runners had identities


@dataclass
class BuildRecord:
    """One row of ``builds``: a request to build a commit, and how it went."""

    id: int
    sha: str
    branch: str
    status: BuildStatus
    attempt: int
    runner: str | None
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    runners: list[str] = field(default_factory=list)
    tests: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # runners lost while running it (runners that left on purpose excluded)
    subject: str | None = None  # the commit's first line, once someone with git said it
    author: str | None = None  # its author's name, likewise
    needs: dict[str, str] = field(default_factory=dict)  # the runner labels it needs
    job: str = DEFAULT_JOB  # its job's key (see superci.jobs.JobSpec.key)
    round: int = 0  # the id of the first build of its round (0: its own id)
    after: list[str] = field(default_factory=list)  # the job names it runs after

    def __post_init__(self) -> None:
        self.round = self.round or self.id

    def to_job(self) -> Job:
        """The scheduler's view of an unfinished build."""
        return Job(
            self.id, self.sha, self.branch, self.status, self.attempt, self.runner,
            list(self.runners), lost=self.lost, needs=dict(self.needs),
            job=self.job, round=self.round, after=tuple(self.after),
        )  # fmt: skip


_COLUMNS = (
    "id, sha, branch, status, attempt, runner, queued_at, started_at, finished_at, message, runners"
    ", tests, lost, subject, author, needs, job, coalesce(round_id, id), after_jobs"
)


def _record(row: tuple[Any, ...]) -> BuildRecord:
    (build_id, sha, branch, status, attempt, runner, queued_at, started_at, finished_at,
     message, runners, tests, lost, subject, author, needs, job, round_id, after) = row  # fmt: skip
    return BuildRecord(
        build_id, sha, branch, BuildStatus(status), attempt, runner, queued_at, started_at,
        finished_at, message, runners=json.loads(runners), tests=json.loads(tests), lost=lost,
        subject=subject, author=author, needs=json.loads(needs), job=job, round=round_id,
        after=json.loads(after),
    )  # fmt: skip


class Store:
    """A SQLite database file; one instance per dispatcher process."""

    def __init__(self, path: Path, busy_timeout: float = defaults.DB_BUSY_TIMEOUT) -> None:
        self.path = path
        self._in_transaction = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, with explicit transactions where wanted.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")  # opening: nothing else runs yet
            self._migrate()
            # Then short: another process's lock makes a write fail fast (the dispatcher
            # retries it later) rather than stall the event loop with it.
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except (sqlite3.Error, OSError) as e:
            self._close_quietly()
            raise StorageError(f"cannot open the state database {path}: {e}") from e
        except StorageError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        if hasattr(self, "_db"):
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    def _migrate(self) -> None:
        """Bring the database to :data:`SCHEMA_VERSION`, one committed step at a time, or
        refuse one that a newer superci wrote (reading it could lose what it records).
        Each step reads the version under the write lock, so two processes opening one
        file at once do not both run it."""
        while True:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StorageError(self._too_new(version))
                if version < SCHEMA_VERSION:
                    log.info("bringing %s to schema version %d", self.path, version + 1)
                    MIGRATIONS[version](self._db)
                    version += 1
                    self._db.execute(f"PRAGMA user_version = {version}")
                    self._db.execute(
                        "INSERT OR REPLACE INTO about (key, value) VALUES ('written_by', ?)",
                        (__version__,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            if version == SCHEMA_VERSION:
                return

    def _too_new(self, version: int) -> str:
        """Why a database of a newer schema is refused, and what would read it."""
        writer: str | None = None
        with contextlib.suppress(sqlite3.Error):  # ``about`` is kept by every later schema
            row = self._db.execute("SELECT value FROM about WHERE key = 'written_by'").fetchone()
            writer = None if row is None else str(row[0])
        if writer is not None and writer != __version__:  # a development version may not tell
            needed = f"superci {writer} or newer"
        else:
            needed = f"a superci that reads schema {version}"
        return (
            f"the state database {self.path} has schema version {version}, from a newer"
            f" superci; this superci {__version__} reads schema versions up to"
            f" {SCHEMA_VERSION}: run {needed}, or give another --state"
        )

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every write inside one committed transaction (one fsync instead of one per
        write): the dispatcher records all the results of one turn of its loop together.
        Nested use joins the outer transaction."""
        if self._in_transaction:
            yield
            return
        self._execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._in_transaction = False
        try:
            self._execute("COMMIT")
        except StorageError:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as e:
            raise StorageError(f"cannot write to the state database {self.path}: {e}") from e

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """One write; committed at once unless inside :meth:`transaction`."""
        return self._execute(sql, params)  # autocommit mode: each statement commits itself

    # --- builds ---------------------------------------------------------------------

    def add_build(
        self, sha: str, branch: str, now: float,
        subject: str | None = None, author: str | None = None,
        needs: dict[str, str] | None = None,
        *, job: str = DEFAULT_JOB, round: int | None = None, after: Sequence[str] = (),
    ) -> BuildRecord:  # fmt: skip
        """Store a new queued build (with the runner labels it needs): the job ``job`` of
        the round ``round`` (None: a round of its own, which it starts), run ``after``
        those job names; returns once it is committed (or with the outer transaction)."""
        needs = dict(needs or {})
        cursor = self._write(
            "INSERT INTO builds (sha, branch, status, queued_at, subject, author, needs, job,"
            " round_id, after_jobs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sha, branch, BuildStatus.QUEUED, now, subject, author, json.dumps(needs), job,
             round, json.dumps(list(after))),
        )  # fmt: skip
        assert cursor.lastrowid is not None
        return BuildRecord(cursor.lastrowid, sha, branch, BuildStatus.QUEUED, 0, None, now,
                           subject=subject, author=author, needs=needs, job=job,
                           round=round or 0, after=list(after))  # fmt: skip

    def round_of(self, round_id: int) -> list[BuildRecord]:
        """Every job of a round, in the order they were stored."""
        return self._all(
            f"SELECT {_COLUMNS} FROM builds WHERE id = ? OR round_id = ? ORDER BY id",
            (round_id, round_id),
        )

    def commits_with_jobs(self, limit: int) -> list[str]:
        """The newest commits (at most ``limit``, newest first) that had a build of a named
        job, found among the newest builds of named jobs only (a walk back from the
        newest row, which stops early)."""
        rows = self._execute(
            "SELECT sha FROM builds WHERE job != ? ORDER BY id DESC LIMIT ?",
            (DEFAULT_JOB, limit * ROWS_PER_COMMIT),
        )
        return list(dict.fromkeys(sha for (sha,) in rows))[:limit]

    def latest_round(self, sha: str) -> list[BuildRecord]:
        """The jobs of the newest round of a commit; empty if it was never asked for."""
        latest = self.latest_for(sha)
        return [] if latest is None else self.round_of(latest.round)

    def describe(self, build_id: int, subject: str | None, author: str | None) -> None:
        """Record the commit's subject and author where the build has none yet (what the
        submitter said stands)."""
        self._write(
            "UPDATE builds SET subject = coalesce(subject, ?), author = coalesce(author, ?)"
            " WHERE id = ?",
            (subject, author, build_id),
        )

    def mark_running(self, build_id: int, attempt: int, runner: str, now: float) -> None:
        self._write(
            "UPDATE builds SET status = ?, attempt = ?, runner = ?, started_at = ?,"
            " runners = json_insert(runners, '$[#]', ?) WHERE id = ?",
            (BuildStatus.RUNNING, attempt, runner, now, runner, build_id),
        )

    def mark_queued(
        self, build_id: int, message: str, lost: bool = True, needs: dict[str, str] | None = None
    ) -> None:
        """A build whose runner is gone waits again; ``message`` says what happened, and
        ``lost`` whether the runner was lost (counted) rather than gone on purpose;
        ``needs``, when given, replace the labels it needs (its runner learned them)."""
        self._write(
            "UPDATE builds SET status = ?, runner = NULL, message = ?, lost = lost + ?,"
            " needs = coalesce(?, needs) WHERE id = ?",
            (BuildStatus.QUEUED, message, int(lost),
             None if needs is None else json.dumps(needs), build_id),
        )  # fmt: skip

    def finish(
        self,
        build_id: int,
        status: BuildStatus,
        now: float,
        message: str = "",
        tests: dict[str, int] | None = None,
    ) -> None:
        """Mark a build finished, with its test counts (none if no test run was read);
        the split results it kept are no longer needed (both with the caller's
        transaction, as the dispatcher records a build's end)."""
        self._write(
            "UPDATE builds SET status = ?, finished_at = ?, message = ?, tests = ? WHERE id = ?",
            (status, now, message, json.dumps(tests or {}), build_id),
        )
        self._write("DELETE FROM split_results WHERE build_id = ?", (build_id,))

    def get(self, build_id: int) -> BuildRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM builds WHERE id = ?", (build_id,))

    def latest_for(self, sha: str) -> BuildRecord | None:
        """The newest build of a commit, if it was ever asked for."""
        return self._one(
            f"SELECT {_COLUMNS} FROM builds WHERE sha = ? ORDER BY id DESC LIMIT 1", (sha,)
        )

    def latest_by_prefix(self, prefix: str, limit: int) -> list[BuildRecord]:
        """The newest build of each commit whose id starts with ``prefix`` (lowercase hex),
        newest first, at most ``limit``: a range scan of the sha index."""
        return self._all(
            f"SELECT {_COLUMNS} FROM builds WHERE id IN (SELECT max(id) FROM builds"
            " WHERE sha >= ? AND sha < ? GROUP BY sha) ORDER BY id DESC LIMIT ?",
            (prefix, prefix + "g", limit),  # "g" sorts after every hex digit
        )

    def latest_on_branch(self, branch: str) -> BuildRecord | None:
        """The newest build asked for on a branch."""
        return self._one(
            f"SELECT {_COLUMNS} FROM builds WHERE branch = ? ORDER BY id DESC LIMIT 1", (branch,)
        )

    def unfinished(self) -> list[BuildRecord]:
        """Queued and running builds, oldest first: what a restarted dispatcher resumes."""
        return self._all(
            f"SELECT {_COLUMNS} FROM builds WHERE status IN ('queued', 'running') ORDER BY id",
            (),
        )

    def recent(self, limit: int) -> list[BuildRecord]:
        """The newest builds, newest first."""
        return self._all(f"SELECT {_COLUMNS} FROM builds ORDER BY id DESC LIMIT ?", (limit,))

    def page(self, limit: int, offset: int = 0, branch: str | None = None) -> list[BuildRecord]:
        """Builds newest first, ``offset`` of them skipped (a page of a list), only those
        of ``branch`` when one is given; the id and branch indexes keep it fast."""
        where, params = ("WHERE branch = ?", (branch,)) if branch is not None else ("", ())
        return self._all(
            f"SELECT {_COLUMNS} FROM builds {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )

    def latest_finished_round_on_branch(self, branch: str) -> list[BuildRecord]:
        """The jobs of the newest round of a branch whose jobs have all finished (what its
        badge shows); empty if it has none."""
        try:
            row = self._db.execute(
                "SELECT coalesce(round_id, id) AS round FROM builds WHERE branch = ?"
                " GROUP BY round HAVING sum(status IN ('queued', 'running')) = 0"
                " ORDER BY round DESC LIMIT 1",
                (branch,),
            ).fetchone()
        except sqlite3.Error as e:
            raise StorageError(f"cannot read the state database {self.path}: {e}") from e
        return [] if row is None else self.round_of(row[0])

    # --- runners --------------------------------------------------------------------

    def runner_seen(
        self, name: str, host: str, pid: int, now: float, identity: str | None = None
    ) -> None:
        """Record a registration; ``identity`` (a digest) binds a name that has none yet."""
        self._write(
            "INSERT INTO runners (name, host, pid, first_seen, last_seen, identity)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET host = excluded.host,"
            " pid = excluded.pid, last_seen = excluded.last_seen,"
            " identity = coalesce(excluded.identity, identity)",
            (name, host, pid, now, now, identity),
        )

    def runner(self, name: str) -> RunnerRecord | None:
        """The name's row, if it ever registered."""
        try:
            row = self._db.execute(
                "SELECT name, host, last_seen, identity FROM runners WHERE name = ?", (name,)
            ).fetchone()
        except sqlite3.Error as e:
            raise StorageError(f"cannot read the state database {self.path}: {e}") from e
        return None if row is None else RunnerRecord(*row)

    def forget_runner(self, name: str) -> bool:
        """Unbind a name from its identity, so the next runner to register takes it;
        False if the name never registered."""
        return self._write("DELETE FROM runners WHERE name = ?", (name,)).rowcount > 0

    # --- test durations -------------------------------------------------------------

    def test_durations(self, tests: Iterable[str]) -> dict[str, float]:
        """The known average duration of each of ``tests`` (those never measured are left
        out: a split gives them the median of the others)."""
        known: dict[str, float] = {}
        for chunk, marks in _in_chunks(tests):
            rows = self._execute(
                f"SELECT test, seconds FROM test_durations WHERE test IN ({marks})", chunk
            )
            known.update((test, float(seconds)) for test, seconds in rows)
        return known

    def record_test_durations(
        self, measured: Mapping[str, float], now: float,
        weight: float = defaults.DURATION_WEIGHT,
    ) -> None:  # fmt: skip
        """Fold one build's measured durations into the moving averages, in one transaction."""
        with self.transaction():
            averages = updated_durations(self.test_durations(measured), measured, weight)
            for test, seconds in averages.items():
                if test in measured and measured[test] >= 0:
                    self._write(
                        "INSERT INTO test_durations (test, seconds, updated) VALUES (?, ?, ?)"
                        " ON CONFLICT (test) DO UPDATE SET seconds = excluded.seconds,"
                        " updated = excluded.updated",
                        (test, seconds, now),
                    )

    # --- a split's kept results -------------------------------------------------------

    def keep_split_results(
        self, build_id: int, results: Iterable[TestResult], limit: int = MAX_KEPT_PER_BUILD
    ) -> bool:
        """Keep results a split build recorded, in one transaction; a test keeps its first
        (a split records each test once; a resent one changes nothing). A build keeps at
        most ``limit``: False when these would go beyond (none of them is kept)."""
        rows = [(build_id, r.test, r.outcome, r.duration, r.message, r.participant)
                for r in results]  # fmt: skip
        (held,) = self._execute(
            "SELECT count(*) FROM split_results WHERE build_id = ?", (build_id,)
        ).fetchone()
        if held + len(rows) > limit:
            return False
        try:
            with self.transaction():
                self._db.executemany(
                    "INSERT OR IGNORE INTO split_results (build_id, test, outcome, seconds,"
                    " message, participant) VALUES (?, ?, ?, ?, ?, ?)", rows,
                )  # fmt: skip
        except sqlite3.Error as e:
            raise StorageError(f"cannot write to the state database {self.path}: {e}") from e
        return True

    def kept_split_results(self, build_id: int, tests: Iterable[str]) -> dict[str, TestResult]:
        """The kept results of those of ``tests`` that have one."""
        kept: dict[str, TestResult] = {}
        for chunk, marks in _in_chunks(tests):
            rows = self._execute(
                "SELECT test, outcome, seconds, message, participant FROM split_results"
                f" WHERE build_id = ? AND test IN ({marks})", (build_id, *chunk),
            )  # fmt: skip
            for test, outcome, seconds, message, participant in rows:
                kept[test] = TestResult(test, TestOutcome(outcome), float(seconds), message,
                                        participant)  # fmt: skip
        return kept

    # --- reading --------------------------------------------------------------------

    def _one(self, sql: str, params: tuple[Any, ...]) -> BuildRecord | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[BuildRecord]:
        try:
            return [_record(row) for row in self._db.execute(sql, params)]
        except sqlite3.Error as e:
            raise StorageError(f"cannot read the state database {self.path}: {e}") from e
