"""The state store: instances, series, jobs, deliveries and results in one SQLite file.

This is the seam named in ARCHITECTURE.md ("Growing past one machine"): everything the
receiver, tracker, worker and sender need from shared state goes through ``StateStore``'s
methods, which take and return the small frozen records below (never sqlite rows), so another
backend (a distributed queue) can implement the same methods.

One clock
---------
Every timestamp is UTC epoch seconds (``time.time()``), never a local or naive datetime.
The store is the only clock of the node (ARCHITECTURE.md, "One clock"): pollers ask it what
is due (``series_due_to_close``, ``claim_next_job``, ``delivery_due_by_destination``) instead
of holding per-item timers, so a missed wake-up costs one tick and start-up is the normal path.

Durability
----------
* WAL mode; every state change is one transaction (``with self._tx() as cur``).
* Connections are bounded: a small pool (``pool_size``, default 4) shared by every thread.
  A thread borrows one for one query or one transaction and gives it back (a thread that
  already holds one reuses it), so the number of open file descriptors does not grow with
  the number of associations or threads. ``synchronous`` is chosen per call site:
  instance rows are committed with ``synchronous=NORMAL`` (a commit survives a crash of the
  process, and after a power loss the spool file itself, fsynced before the row, is adopted by
  start-up reconciliation); every other state change (job and delivery transitions, results)
  is committed with ``synchronous=FULL`` (durable when the method returns).
* Queries name their columns (``_cols(Record)``), never ``SELECT *`` mapped by position.

Schema versions and migrations
------------------------------
The schema version is SQLite's ``PRAGMA user_version``; ``MIGRATIONS`` is the ordered tuple
of functions that bring a store from version ``i`` to ``i + 1`` (``MIGRATIONS[i]``), so
``SCHEMA_VERSION == len(MIGRATIONS)``. Opening a store runs, in one ``BEGIN IMMEDIATE``
transaction, every migration it has not had yet and sets ``user_version``; a store written
by a newer node (a higher version) is refused with ``SchemaTooNew``. Version 0 is both an
empty file and a store written before versioning (the schema of main at 1b62895): the first
migration uses ``CREATE ... IF NOT EXISTS`` so it is right for both.

To change the schema, add ONE function at the end of the migrations section and append it
to ``MIGRATIONS``::

    def _migration_3_patient_measurements(cur: sqlite3.Cursor) -> None:
        _run(cur, '''
            CREATE TABLE patient_measurements (...);
            CREATE INDEX patient_measurements_patient ON patient_measurements(...);
        ''')

Never edit a migration that has shipped (stores in the field already ran it); a migration
runs inside the transaction, so use ``_run(cur, sql)`` (or ``cur.execute``), never
``executescript`` (it commits). Then add the record fields and methods that use the new
columns; ``tests/test_store.py`` opens a store of every earlier version.

States
------
series: open -> (closed) -> queued -> analysing -> done | skipped | failed; a new instance
reopens any state to ``open``. ``closed`` is transient (a close decided but not yet
recorded) and is never left behind, because the decision is written in the same transaction;
``closed_at`` records when it happened.
jobs: queued -> running -> done | failed; ``cancelled`` when newer instances arrive before the
job started (the series is re-evaluated when it closes again). A job found ``running`` at
start-up was interrupted by a crash: ``crashes`` counts those, and after ``MAX_JOB_CRASHES``
the job is failed with the reason instead of being re-queued. A clean stop puts its running
jobs back to ``queued`` without counting a crash (``release_jobs``).
deliveries: pending -> done | failed; ``failure_kind`` says whether a failure was
``permanent`` (the peer refused for good: failed at once) or ``transient`` (retried with
backoff until ``max_attempts``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

DB_FILENAME = "lungnode.sqlite3"

SERIES_OPEN = "open"
SERIES_CLOSED = "closed"
SERIES_QUEUED = "queued"
SERIES_ANALYSING = "analysing"
SERIES_DONE = "done"
SERIES_SKIPPED = "skipped"
SERIES_FAILED = "failed"

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"
JOB_CANCELLED = "cancelled"

DELIVERY_PENDING = "pending"
DELIVERY_DONE = "done"
DELIVERY_FAILED = "failed"

FAILURE_TRANSIENT = "transient"
FAILURE_PERMANENT = "permanent"

MAX_JOB_CRASHES = 2  # a job that took the process down this many times is failed
DEFAULT_POOL_SIZE = 4


class SchemaTooNew(RuntimeError):
    """The store was written by a newer lungnode (its schema version is higher than ours)."""


# -- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    path: str
    size_bytes: int
    received_at: float
    calling_ae: str


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    study_uid: str
    state: str
    reason: str | None
    first_instance_at: float
    last_instance_at: float
    instance_count: int
    revision: int
    analysed_instance_count: int
    purged_at: float | None
    closed_at: float | None = None


@dataclass(frozen=True)
class JobRecord:
    id: int
    series_uid: str
    revision: int
    state: str
    attempts: int
    reason: str | None
    instance_count: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    crashes: int = 0


@dataclass(frozen=True)
class ResultRecord:
    series_uid: str
    revision: int
    job_id: int
    measurements_json: str
    sr_uids: tuple[str, str, str]  # study, series, SOP instance
    outbox_dir: str
    created_at: float


@dataclass(frozen=True)
class DeliveryRequest:
    """One output file for one destination (what the worker asks the store to deliver)."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    destination: str  # "AE@host:port"


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    job_id: int
    series_uid: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    done_at: float | None
    failure_kind: str | None = None  # FAILURE_TRANSIENT | FAILURE_PERMANENT, None when fine


@dataclass(frozen=True)
class DeliveryOutcome:
    """The result of one attempt at one delivery row (what the sender reports)."""

    delivery_id: int
    error: str | None = None  # None: delivered
    permanent: bool = False  # the peer refused for good: fail now, do not retry


@dataclass(frozen=True)
class JobSummary:
    """Where a job's deliveries stand (the sender logs the series' final state from it)."""

    job_id: int
    series_uid: str
    pending: int
    done: int
    failed: int


@dataclass(frozen=True)
class PatientScan:
    """One analysed scan of a patient: what the course needs (no patient name, ever).

    patient_id and issuer_of_patient_id ("" when the header has none) identify the patient;
    acquired_at is the acquisition time (epoch seconds, UTC)."""

    series_uid: str
    revision: int
    study_uid: str
    patient_id: str
    issuer_of_patient_id: str
    acquired_at: float
    measurements_json: str
    sr_uids: tuple[str, str, str] | None    # study, series, SOP instance
    seg_uids: tuple[str, str] | None        # series, SOP instance
    recorded_at: float


def _cols(record: type, prefix: str = "") -> str:
    """The record's columns, by name, in the record's field order (for SELECT)."""
    return ", ".join(prefix + f.name for f in dataclasses.fields(record))


_RESULT_COLS = ("series_uid, revision, job_id, measurements_json, sr_study_uid, sr_series_uid,"
                " sr_sop_uid, outbox_dir, created_at")


def _result(row: Sequence) -> ResultRecord:
    return ResultRecord(
        series_uid=row[0], revision=row[1], job_id=row[2], measurements_json=row[3],
        sr_uids=(row[4], row[5], row[6]), outbox_dir=row[7], created_at=row[8],
    )


# -- migrations ----------------------------------------------------------------------------
def _run(cur: sqlite3.Cursor, script: str) -> None:
    """Run ';'-separated DDL statements inside the current transaction."""
    for statement in script.split(";"):
        if statement.strip():
            cur.execute(statement)


def _migration_1_base(cur: sqlite3.Cursor) -> None:
    """The schema as it was before versioning (main at 1b62895); a no-op on such a store."""
    _run(cur, """
    CREATE TABLE IF NOT EXISTS instances (
        sop_instance_uid TEXT PRIMARY KEY,
        series_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        received_at REAL NOT NULL,
        calling_ae TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
    CREATE TABLE IF NOT EXISTS series (
        series_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        first_instance_at REAL NOT NULL,
        last_instance_at REAL NOT NULL,
        instance_count INTEGER NOT NULL,
        revision INTEGER NOT NULL DEFAULT 0,
        analysed_instance_count INTEGER NOT NULL DEFAULT 0,
        purged_at REAL
    );
    CREATE INDEX IF NOT EXISTS series_state ON series(state);
    CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        series_uid TEXT NOT NULL,
        revision INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        instance_count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
    CREATE TABLE IF NOT EXISTS results (
        series_uid TEXT NOT NULL,
        revision INTEGER NOT NULL,
        job_id INTEGER NOT NULL,
        measurements_json TEXT NOT NULL,
        sr_study_uid TEXT NOT NULL,
        sr_series_uid TEXT NOT NULL,
        sr_sop_uid TEXT NOT NULL,
        outbox_dir TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (series_uid, revision)
    );
    CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        series_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, next_attempt_at)
    """)


def _migration_2_clock_and_failures(cur: sqlite3.Cursor) -> None:
    """Series close time, job crash count, delivery failure kind; indexes for the pollers."""
    _run(cur, """
    ALTER TABLE series ADD COLUMN closed_at REAL;
    ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN failure_kind TEXT;
    CREATE INDEX series_state_last ON series(state, last_instance_at);
    CREATE INDEX deliveries_destination ON deliveries(state, destination, next_attempt_at)
    """)


def _migration_3_patient_scans(cur: sqlite3.Cursor) -> None:
    """The patients' courses (issue 9): each analysed scan's measurements by patient
    (Patient ID + Issuer of Patient ID, never the name)."""
    _run(cur, """
    CREATE TABLE IF NOT EXISTS patient_scans (
        series_uid TEXT NOT NULL,
        revision INTEGER NOT NULL,
        study_uid TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        issuer_of_patient_id TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        measurements_json TEXT NOT NULL,
        sr_study_uid TEXT,
        sr_series_uid TEXT,
        sr_sop_uid TEXT,
        seg_series_uid TEXT,
        seg_sop_uid TEXT,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (series_uid, revision)
    );
    CREATE INDEX IF NOT EXISTS patient_scans_patient
        ON patient_scans(issuer_of_patient_id, patient_id)
    """)


MIGRATIONS: tuple[Callable[[sqlite3.Cursor], None], ...] = (
    _migration_1_base,
    _migration_2_clock_and_failures,
    _migration_3_patient_scans,
)
SCHEMA_VERSION = len(MIGRATIONS)


# -- the store -----------------------------------------------------------------------------
class StateStore:
    """Thread-safe access to the node's state through a bounded pool of SQLite connections."""

    def __init__(self, db_path: Path, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self.schema_version = self._migrate()

    # -- connection plumbing -------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow a pooled connection (re-entrant within a thread)."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            yield held
            return
        if self._closed:
            raise RuntimeError("state store is closed")
        self._slots.acquire()
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._open()
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None
                if self._closed:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                else:
                    self._idle.put(conn)
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on error."""
        with self._connection() as conn:
            if conn.in_transaction:  # nested: part of the caller's transaction
                yield conn.cursor()
                return
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

    def _migrate(self) -> int:
        with self._tx() as cur:
            version = cur.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"state store {self.db_path} has schema version {version}, newer than "
                    f"this lungnode's {SCHEMA_VERSION}: upgrade lungnode or use another "
                    "storage.root"
                )
            for step in MIGRATIONS[version:]:
                step(cur)
            if version != SCHEMA_VERSION:
                cur.execute(f"PRAGMA user_version={SCHEMA_VERSION:d}")
        return SCHEMA_VERSION

    def open_connections(self) -> int:
        """How many SQLite connections this store holds (bounded by ``pool_size``)."""
        with self._all_lock:
            return len(self._all)

    def close(self) -> None:
        """Close every connection (call when all threads using the store have stopped)."""
        self._closed = True
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break

    # -- instances and series ------------------------------------------------------------
    def record_instance(self, rec: InstanceRecord, *, replaced: bool = False) -> bool:
        """Record a stored instance and touch (or reopen) its series.

        Returns True when the instance is new or its content was replaced, False when the row
        already existed and ``replaced`` is False (an idempotent duplicate: nothing changes).
        """
        with self._tx(durable=False) as cur:
            exists = cur.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid=?", (rec.sop_instance_uid,)
            ).fetchone()
            if exists and not replaced:
                return False
            cur.execute(
                f"INSERT OR REPLACE INTO instances ({_cols(InstanceRecord)})"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    rec.sop_instance_uid, rec.series_uid, rec.study_uid, rec.sop_class_uid,
                    rec.path, rec.size_bytes, rec.received_at, rec.calling_ae,
                ),
            )
            added = 0 if exists else 1
            row = cur.execute(
                "SELECT state FROM series WHERE series_uid=?", (rec.series_uid,)
            ).fetchone()
            if row is None:
                cur.execute(
                    "INSERT INTO series (series_uid, study_uid, state, first_instance_at,"
                    " last_instance_at, instance_count) VALUES (?,?,?,?,?,1)",
                    (rec.series_uid, rec.study_uid, SERIES_OPEN, rec.received_at,
                     rec.received_at),
                )
            else:
                cur.execute(
                    "UPDATE series SET state=?, reason=NULL, purged_at=NULL,"
                    " last_instance_at=MAX(last_instance_at, ?),"
                    " instance_count=instance_count+? WHERE series_uid=?",
                    (SERIES_OPEN, rec.received_at, added, rec.series_uid),
                )
                if row[0] == SERIES_QUEUED:
                    # The queued job has not started: it would analyse an incomplete series.
                    cur.execute(
                        "UPDATE jobs SET state=?, reason=?, finished_at=? "
                        "WHERE series_uid=? AND state=?",
                        (JOB_CANCELLED, "newer instances arrived before it started",
                         rec.received_at, rec.series_uid, JOB_QUEUED),
                    )
            return True

    def known_instance_paths(self) -> set[str]:
        return {row[0] for row in self._query("SELECT path FROM instances")}

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        rows = self._query(
            f"SELECT {_cols(InstanceRecord)} FROM instances WHERE sop_instance_uid=?",
            (sop_instance_uid,),
        )
        return InstanceRecord(*rows[0]) if rows else None

    def series_instances(self, series_uid: str) -> list[InstanceRecord]:
        rows = self._query(
            f"SELECT {_cols(InstanceRecord)} FROM instances WHERE series_uid=? ORDER BY path",
            (series_uid,),
        )
        return [InstanceRecord(*r) for r in rows]

    def series(self, series_uid: str) -> SeriesRecord | None:
        rows = self._query(
            f"SELECT {_cols(SeriesRecord)} FROM series WHERE series_uid=?", (series_uid,)
        )
        return SeriesRecord(*rows[0]) if rows else None

    def series_in_state(self, *states: str) -> list[SeriesRecord]:
        marks = ",".join("?" * len(states))
        rows = self._query(
            f"SELECT {_cols(SeriesRecord)} FROM series WHERE state IN ({marks})", states
        )
        return [SeriesRecord(*r) for r in rows]

    def series_due_to_close(self, quiet_period_s: float, now: float | None = None) -> list[SeriesRecord]:
        """Open series whose last instance is at least ``quiet_period_s`` old, oldest first."""
        now = time.time() if now is None else now
        rows = self._query(
            f"SELECT {_cols(SeriesRecord)} FROM series WHERE state=? AND last_instance_at<=?"
            " ORDER BY last_instance_at",
            (SERIES_OPEN, now - quiet_period_s),
        )
        return [SeriesRecord(*r) for r in rows]

    def next_series_close_at(self, quiet_period_s: float) -> float | None:
        """When the next open series falls quiet (UTC epoch), or None when none is open."""
        row = self._query(
            "SELECT MIN(last_instance_at) FROM series WHERE state=?", (SERIES_OPEN,)
        )[0][0]
        return None if row is None else row + quiet_period_s

    def close_series(
        self, series_uid: str, *, quiet_since: float, instance_count: int,
        selected: bool, reason: str, now: float | None = None,
    ) -> JobRecord | None | bool:
        """Close an open series and record the rules' decision, in one transaction.

        Only applies when the series is still open, got no instance after ``quiet_since`` and
        still has ``instance_count`` instances (otherwise returns False: it was touched since
        the headers were read; the tracker will try again). Selected: a queued job whose
        revision follows every earlier job and result (returned). Not selected: the series
        is ``skipped`` with ``reason`` (returns None).
        """
        now = time.time() if now is None else now
        with self._tx() as cur:
            row = cur.execute(
                "SELECT state, last_instance_at, instance_count FROM series WHERE series_uid=?",
                (series_uid,),
            ).fetchone()
            if row is None or row[0] != SERIES_OPEN or row[1] > quiet_since or row[2] != instance_count:
                return False
            if not selected:
                cur.execute(
                    "UPDATE series SET state=?, reason=?, closed_at=? WHERE series_uid=?",
                    (SERIES_SKIPPED, reason, now, series_uid),
                )
                return None
            revision = 1 + cur.execute(
                "SELECT MAX(COALESCE((SELECT MAX(revision) FROM results WHERE series_uid=?),0),"
                " COALESCE((SELECT MAX(revision) FROM jobs WHERE series_uid=? AND state IN (?,?)),0))",
                (series_uid, series_uid, JOB_RUNNING, JOB_QUEUED),
            ).fetchone()[0]
            cur.execute(
                "INSERT INTO jobs (series_uid, revision, state, instance_count, created_at)"
                " VALUES (?,?,?,?,?)",
                (series_uid, revision, JOB_QUEUED, instance_count, now),
            )
            job_id = cur.lastrowid
            cur.execute(
                "UPDATE series SET state=?, reason=?, closed_at=? WHERE series_uid=?",
                (SERIES_QUEUED, reason, now, series_uid),
            )
        return self.job(job_id)

    # -- jobs ----------------------------------------------------------------------------
    def job(self, job_id: int) -> JobRecord | None:
        rows = self._query(f"SELECT {_cols(JobRecord)} FROM jobs WHERE id=?", (job_id,))
        return JobRecord(*rows[0]) if rows else None

    def jobs_for_series(self, series_uid: str) -> list[JobRecord]:
        rows = self._query(
            f"SELECT {_cols(JobRecord)} FROM jobs WHERE series_uid=? ORDER BY id", (series_uid,)
        )
        return [JobRecord(*r) for r in rows]

    def claim_next_job(self, now: float | None = None) -> JobRecord | None:
        """Atomically take the oldest queued job whose series has no running job."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            row = cur.execute(
                "SELECT id, series_uid FROM jobs j WHERE state=? AND NOT EXISTS"
                " (SELECT 1 FROM jobs r WHERE r.series_uid=j.series_uid AND r.state=?)"
                " ORDER BY id LIMIT 1",
                (JOB_QUEUED, JOB_RUNNING),
            ).fetchone()
            if row is None:
                return None
            job_id, series_uid = row
            count = cur.execute(
                "SELECT COUNT(*) FROM instances WHERE series_uid=?", (series_uid,)
            ).fetchone()[0]
            cur.execute(
                "UPDATE jobs SET state=?, attempts=attempts+1, started_at=?, instance_count=?"
                " WHERE id=?",
                (JOB_RUNNING, now, count, job_id),
            )
            cur.execute(
                "UPDATE series SET state=? WHERE series_uid=? AND state=?",
                (SERIES_ANALYSING, series_uid, SERIES_QUEUED),
            )
        return self.job(job_id)

    def complete_job(
        self, job_id: int, *, measurements_json: str, sr_uids: tuple[str, str, str],
        outbox_dir: str, deliveries: Sequence[DeliveryRequest], now: float | None = None,
        patient_scan: PatientScan | None = None,
    ) -> None:
        """Record a job's result and its delivery rows, and mark it done: one transaction.

        ``patient_scan``: the scan for the patient's course, recorded in the same transaction."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            series_uid, revision, state, count = cur.execute(
                "SELECT series_uid, revision, state, instance_count FROM jobs WHERE id=?",
                (job_id,),
            ).fetchone()
            if state != JOB_RUNNING:
                raise RuntimeError(f"job {job_id} is {state}, not running")
            cur.execute(
                f"INSERT OR REPLACE INTO results ({_RESULT_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (series_uid, revision, job_id, measurements_json, *sr_uids, outbox_dir, now),
            )
            if patient_scan is not None:
                _insert_patient_scan(cur, patient_scan)
            cur.executemany(
                "INSERT INTO deliveries (job_id, series_uid, path, sop_class_uid,"
                " sop_instance_uid, destination, state, next_attempt_at, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (job_id, series_uid, d.path, d.sop_class_uid, d.sop_instance_uid,
                     d.destination, DELIVERY_PENDING, now, now)
                    for d in deliveries
                ],
            )
            cur.execute(
                "UPDATE jobs SET state=?, finished_at=?, reason=NULL WHERE id=?",
                (JOB_DONE, now, job_id),
            )
            cur.execute(
                "UPDATE series SET revision=MAX(revision, ?), analysed_instance_count=?,"
                " state=CASE WHEN state=? THEN ? ELSE state END WHERE series_uid=?",
                (revision, count, SERIES_ANALYSING, SERIES_DONE, series_uid),
            )

    def fail_job(self, job_id: int, reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as cur:
            series_uid = cur.execute(
                "SELECT series_uid FROM jobs WHERE id=?", (job_id,)
            ).fetchone()[0]
            cur.execute(
                "UPDATE jobs SET state=?, reason=?, finished_at=? WHERE id=?",
                (JOB_FAILED, reason, now, job_id),
            )
            cur.execute(
                "UPDATE series SET state=?, reason=? WHERE series_uid=? AND state=?",
                (SERIES_FAILED, reason, series_uid, SERIES_ANALYSING),
            )

    def requeue_running_jobs(
        self, *, max_crashes: int = MAX_JOB_CRASHES, now: float | None = None,
    ) -> tuple[list[JobRecord], list[JobRecord]]:
        """Start-up: jobs left ``running`` were interrupted by a crash of the process.

        Each one's ``crashes`` grows by one; below ``max_crashes`` it goes back to
        ``queued``, at ``max_crashes`` it is ``failed`` with the reason (the series too), so
        a series that kills the node is not analysed again on every restart.
        Returns (re-queued jobs, failed jobs).
        """
        now = time.time() if now is None else now
        with self._tx() as cur:
            rows = cur.execute(
                "SELECT id, crashes + 1 FROM jobs WHERE state=?", (JOB_RUNNING,)
            ).fetchall()
            requeued, failed = [], []
            for job_id, crashes in rows:
                if crashes >= max_crashes:
                    reason = (f"the node process stopped {crashes} times while analysing this "
                              "series (crash, kill or out of memory); not retried: see the "
                              "node's log")
                    cur.execute(
                        "UPDATE jobs SET state=?, crashes=?, reason=?, finished_at=? WHERE id=?",
                        (JOB_FAILED, crashes, reason, now, job_id),
                    )
                    cur.execute(
                        "UPDATE series SET state=?, reason=? WHERE state=? AND series_uid="
                        "(SELECT series_uid FROM jobs WHERE id=?)",
                        (SERIES_FAILED, reason, SERIES_ANALYSING, job_id),
                    )
                    failed.append(job_id)
                else:
                    cur.execute(
                        "UPDATE jobs SET state=?, crashes=?, started_at=NULL WHERE id=?",
                        (JOB_QUEUED, crashes, job_id),
                    )
                    cur.execute(
                        "UPDATE series SET state=? WHERE state=? AND series_uid="
                        "(SELECT series_uid FROM jobs WHERE id=?)",
                        (SERIES_QUEUED, SERIES_ANALYSING, job_id),
                    )
                    requeued.append(job_id)
        return ([j for j in map(self.job, requeued) if j is not None],
                [j for j in map(self.job, failed) if j is not None])

    def release_jobs(self, job_ids: Sequence[int]) -> int:
        """A clean stop: these running jobs go back to ``queued`` (no crash counted, the
        attempt is not counted either). Returns how many were released."""
        released = 0
        with self._tx() as cur:
            for job_id in job_ids:
                cur.execute(
                    "UPDATE jobs SET state=?, started_at=NULL, attempts=MAX(attempts-1, 0)"
                    " WHERE id=? AND state=?",
                    (JOB_QUEUED, job_id, JOB_RUNNING),
                )
                if cur.rowcount:
                    released += 1
                    cur.execute(
                        "UPDATE series SET state=? WHERE state=? AND series_uid="
                        "(SELECT series_uid FROM jobs WHERE id=?)",
                        (SERIES_QUEUED, SERIES_ANALYSING, job_id),
                    )
        return released

    def latest_result(self, series_uid: str, before_revision: int | None = None) -> ResultRecord | None:
        sql = f"SELECT {_RESULT_COLS} FROM results WHERE series_uid=?"
        params: list = [series_uid]
        if before_revision is not None:
            sql += " AND revision<?"
            params.append(before_revision)
        rows = self._query(sql + " ORDER BY revision DESC LIMIT 1", params)
        return _result(rows[0]) if rows else None

    def results_for_series(self, series_uid: str) -> list[ResultRecord]:
        rows = self._query(
            f"SELECT {_RESULT_COLS} FROM results WHERE series_uid=? ORDER BY revision",
            (series_uid,),
        )
        return [_result(r) for r in rows]

    # -- the patients' courses ---------------------------------------------------------
    def record_patient_scan(self, scan: PatientScan) -> None:
        with self._tx() as cur:
            _insert_patient_scan(cur, scan)

    def patient_scans(self, patient_id: str, issuer_of_patient_id: str) -> list[PatientScan]:
        """The patient's analysed scans, the latest revision of each series, in the order
        they were recorded (the course orders them by acquisition)."""
        rows = self._query(
            f"SELECT {_PATIENT_SCAN_COLS} FROM patient_scans p"
            " WHERE patient_id=? AND issuer_of_patient_id=?"
            " AND revision=(SELECT MAX(revision) FROM patient_scans q"
            "               WHERE q.series_uid=p.series_uid)"
            " ORDER BY recorded_at, series_uid",
            (patient_id, issuer_of_patient_id),
        )
        return [_patient_scan(r) for r in rows]

    def all_patient_scans(self) -> list[PatientScan]:
        """Every patient's scans (latest revision of each series), by patient and time."""
        rows = self._query(
            f"SELECT {_PATIENT_SCAN_COLS} FROM patient_scans p WHERE revision=(SELECT MAX(revision) FROM"
            " patient_scans q WHERE q.series_uid=p.series_uid)"
            " ORDER BY issuer_of_patient_id, patient_id, acquired_at, recorded_at"
        )
        return [_patient_scan(r) for r in rows]

    def queue_reanalysis(self, series_uid: str, reason: str,
                         now: float | None = None) -> JobRecord | None:
        """Queue a new revision of a done series whose spool is still there (its report must
        be re-issued: a late prior of the same patient arrived). None when the series is not
        done, was purged, or already has a queued or running job."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            row = cur.execute(
                "SELECT state, purged_at, instance_count FROM series WHERE series_uid=?",
                (series_uid,)).fetchone()
            if row is None or row[0] != SERIES_DONE or row[1] is not None:
                return None
            if cur.execute("SELECT 1 FROM jobs WHERE series_uid=? AND state IN (?,?)",
                           (series_uid, JOB_QUEUED, JOB_RUNNING)).fetchone():
                return None
            revision = 1 + cur.execute(
                "SELECT MAX(COALESCE((SELECT MAX(revision) FROM results WHERE series_uid=?),0),"
                " COALESCE((SELECT MAX(revision) FROM jobs WHERE series_uid=?),0))",
                (series_uid, series_uid)).fetchone()[0]
            cur.execute(
                "INSERT INTO jobs (series_uid, revision, state, instance_count, created_at)"
                " VALUES (?,?,?,?,?)", (series_uid, revision, JOB_QUEUED, row[2], now))
            job_id = cur.lastrowid
            cur.execute("UPDATE series SET state=?, reason=? WHERE series_uid=?",
                        (SERIES_QUEUED, reason, series_uid))
        return self.job(job_id)

    def patient_of_study(self, study_uid: str) -> tuple[str, str] | None:
        """(patient_id, issuer_of_patient_id) of an analysed study, None if unknown."""
        rows = self._query(
            "SELECT patient_id, issuer_of_patient_id FROM patient_scans WHERE study_uid=?"
            " ORDER BY recorded_at DESC LIMIT 1", (study_uid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def recent_results(self, limit: int = 20) -> list[ResultRecord]:
        rows = self._query(f"SELECT {_RESULT_COLS} FROM results ORDER BY created_at DESC LIMIT ?",
                           (limit,))
        return [_result(r) for r in rows]

    def jobs_in_state(self, *states: str) -> list[JobRecord]:
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT {_cols(JobRecord)} FROM jobs WHERE state IN ({marks}) ORDER BY id",
                           states)
        return [JobRecord(*r) for r in rows]

    def activity_since(self, since: float) -> tuple[list[JobRecord], list[DeliveryRecord]]:
        """Jobs finished and deliveries created since ``since`` (the status page's charts)."""
        jobs = self._query(
            f"SELECT {_cols(JobRecord)} FROM jobs WHERE finished_at>=? ORDER BY finished_at",
            (since,))
        deliveries = self._query(
            f"SELECT {_cols(DeliveryRecord)} FROM deliveries WHERE created_at>=? ORDER BY id",
            (since,))
        return [JobRecord(*r) for r in jobs], [DeliveryRecord(*r) for r in deliveries]

    # -- deliveries ----------------------------------------------------------------------
    def due_deliveries(
        self, now: float | None = None, *, destination: str | None = None,
    ) -> list[DeliveryRecord]:
        """Pending deliveries whose next attempt is due (for one destination if given)."""
        now = time.time() if now is None else now
        sql = f"SELECT {_cols(DeliveryRecord)} FROM deliveries WHERE state=? AND next_attempt_at<=?"
        params: list = [DELIVERY_PENDING, now]
        if destination is not None:
            sql, params = sql + " AND destination=?", params + [destination]
        return [DeliveryRecord(*r) for r in self._query(sql + " ORDER BY id", params)]

    def delivery_due_by_destination(self) -> dict[str, float]:
        """For each destination with pending deliveries: when the earliest one is due."""
        rows = self._query(
            "SELECT destination, MIN(next_attempt_at) FROM deliveries WHERE state=?"
            " GROUP BY destination",
            (DELIVERY_PENDING,),
        )
        return {dest: due for dest, due in rows}

    def next_delivery_due_at(self) -> float | None:
        row = self._query(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state=?", (DELIVERY_PENDING,)
        )
        return row[0][0]

    def recent_series(self, limit: int = 20) -> list[SeriesRecord]:
        rows = self._query(
            f"SELECT {_cols(SeriesRecord)} FROM series ORDER BY last_instance_at DESC LIMIT ?",
            (limit,),
        )
        return [SeriesRecord(*r) for r in rows]

    def recent_jobs(self, limit: int = 20) -> list[JobRecord]:
        rows = self._query(
            f"SELECT {_cols(JobRecord)} FROM jobs ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [JobRecord(*r) for r in rows]

    def state_counts(self) -> dict[str, dict[str, int]]:
        """How many series, jobs and deliveries are in each state."""
        counts: dict[str, dict[str, int]] = {}
        for table in ("series", "jobs", "deliveries"):
            rows = self._query(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
            counts[table] = {state: count for state, count in rows}
        return counts

    def deliveries(self, *, job_id: int | None = None, state: str | None = None) -> list[DeliveryRecord]:
        sql, params = f"SELECT {_cols(DeliveryRecord)} FROM deliveries WHERE 1=1", []
        if job_id is not None:
            sql, params = sql + " AND job_id=?", params + [job_id]
        if state is not None:
            sql, params = sql + " AND state=?", params + [state]
        return [DeliveryRecord(*r) for r in self._query(sql + " ORDER BY id", params)]

    def record_delivery_attempts(
        self, outcomes: Sequence[DeliveryOutcome | tuple[int, str | None]], *,
        max_attempts: int, retry_delay_s: Callable[[int], float], now: float | None = None,
    ) -> list[JobSummary]:
        """Record one attempt for each outcome (``DeliveryOutcome``, or ``(id, error)``).

        Delivered: ``done``. A permanent refusal: ``failed`` at once, ``failure_kind``
        ``permanent``. A transient failure: rescheduled ``retry_delay_s(attempt_number)``
        seconds later, or ``failed`` once ``max_attempts`` is reached (files are kept).
        Returns where each touched job's deliveries stand afterwards.
        """
        now = time.time() if now is None else now
        jobs: set[int] = set()
        with self._tx() as cur:
            for item in outcomes:
                out = item if isinstance(item, DeliveryOutcome) else DeliveryOutcome(*item)
                row = cur.execute(
                    "SELECT attempts, job_id FROM deliveries WHERE id=?", (out.delivery_id,)
                ).fetchone()
                attempts, job_id = row[0] + 1, row[1]
                jobs.add(job_id)
                if out.error is None:
                    cur.execute(
                        "UPDATE deliveries SET state=?, attempts=?, done_at=?, last_error=NULL,"
                        " failure_kind=NULL WHERE id=?",
                        (DELIVERY_DONE, attempts, now, out.delivery_id),
                    )
                elif out.permanent:
                    cur.execute(
                        "UPDATE deliveries SET state=?, attempts=?, last_error=?, failure_kind=?,"
                        " done_at=? WHERE id=?",
                        (DELIVERY_FAILED, attempts, f"{out.error} (permanent: not retried)",
                         FAILURE_PERMANENT, now, out.delivery_id),
                    )
                elif attempts >= max_attempts:
                    cur.execute(
                        "UPDATE deliveries SET state=?, attempts=?, last_error=?, failure_kind=?,"
                        " done_at=? WHERE id=?",
                        (DELIVERY_FAILED, attempts,
                         f"{out.error} (gave up after {attempts} attempts)", FAILURE_TRANSIENT,
                         now, out.delivery_id),
                    )
                else:
                    cur.execute(
                        "UPDATE deliveries SET attempts=?, last_error=?, failure_kind=?,"
                        " next_attempt_at=? WHERE id=?",
                        (attempts, out.error, FAILURE_TRANSIENT,
                         now + retry_delay_s(attempts + 1), out.delivery_id),
                    )
            summaries = []
            for job_id in sorted(jobs):
                series_uid, pending, done, failed = cur.execute(
                    "SELECT MAX(series_uid), SUM(state=?), SUM(state=?), SUM(state=?)"
                    " FROM deliveries WHERE job_id=?",
                    (DELIVERY_PENDING, DELIVERY_DONE, DELIVERY_FAILED, job_id),
                ).fetchone()
                summaries.append(JobSummary(job_id, series_uid, pending, done, failed))
        return summaries

    # -- retention -----------------------------------------------------------------------
    def series_due_for_purge(self, cutoff: float) -> list[tuple[SeriesRecord, bool]]:
        """Series whose spool may go: finished (done/skipped), quiet since before ``cutoff``,
        not yet purged, nothing pending, and for done ones every delivery done before the
        cutoff. The flag says whether the outbox may go too (only when there were deliveries
        and all are done; without destinations the outbox is where the results stay)."""
        n = len(dataclasses.fields(SeriesRecord))
        rows = self._query(
            f"SELECT {_cols(SeriesRecord, 's.')},"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.series_uid=s.series_uid),"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.series_uid=s.series_uid AND"
            "   (d.state!=? OR d.done_at>=?)),"
            " (SELECT COUNT(*) FROM jobs j WHERE j.series_uid=s.series_uid AND j.state IN (?,?))"
            " FROM series s WHERE s.purged_at IS NULL AND s.state IN (?,?) AND s.last_instance_at<?",
            (DELIVERY_DONE, cutoff, JOB_QUEUED, JOB_RUNNING, SERIES_DONE, SERIES_SKIPPED, cutoff),
        )
        due = []
        for row in rows:
            series, total, not_done, active = SeriesRecord(*row[:n]), row[n], row[n + 1], row[n + 2]
            if active or not_done:
                continue
            due.append((series, total > 0))
        return due

    def mark_purged(self, series_uid: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.execute("DELETE FROM instances WHERE series_uid=?", (series_uid,))
            cur.execute(
                "UPDATE series SET purged_at=?, instance_count=0 WHERE series_uid=?",
                (now, series_uid),
            )


_PATIENT_SCAN_COLS = ("series_uid, revision, study_uid, patient_id, issuer_of_patient_id,"
                      " acquired_at, measurements_json, sr_study_uid, sr_series_uid, sr_sop_uid,"
                      " seg_series_uid, seg_sop_uid, recorded_at")


def _insert_patient_scan(cur: sqlite3.Cursor, scan: PatientScan) -> None:
    cur.execute(
        f"INSERT OR REPLACE INTO patient_scans ({_PATIENT_SCAN_COLS})"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (scan.series_uid, scan.revision, scan.study_uid, scan.patient_id,
         scan.issuer_of_patient_id, scan.acquired_at, scan.measurements_json,
         *(scan.sr_uids or (None, None, None)), *(scan.seg_uids or (None, None)),
         scan.recorded_at),
    )


def _patient_scan(row: Sequence) -> PatientScan:
    return PatientScan(
        series_uid=row[0], revision=row[1], study_uid=row[2], patient_id=row[3],
        issuer_of_patient_id=row[4], acquired_at=row[5], measurements_json=row[6],
        sr_uids=(row[7], row[8], row[9]) if row[9] else None,
        seg_uids=(row[10], row[11]) if row[11] else None, recorded_at=row[12],
    )
