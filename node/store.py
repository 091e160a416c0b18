"""The state store: instances, series, jobs, deliveries and results in one SQLite file.

This is the seam named in ARCHITECTURE.md ("Growing past one machine"): everything the
receiver, tracker, worker and sender need from shared state goes through ``StateStore``'s
methods, which take and return the small frozen records below (never sqlite rows), so another
backend (a distributed queue) can implement the same methods.

Durability
----------
* WAL mode; every state change is one transaction (``with self._tx() as cur``).
* Connections are per thread. ``synchronous`` is chosen per call site:
  instance rows are committed with ``synchronous=NORMAL`` (a commit survives a crash of the
  process, and after a power loss the spool file itself, fsynced before the row, is adopted by
  start-up reconciliation); every other state change (job and delivery transitions, results)
  is committed with ``synchronous=FULL`` (durable when the method returns).

States
------
series: open -> (closed) -> queued -> analysing -> done | skipped | failed; a new instance
reopens any state to ``open``. ``closed`` is transient (a close decided but not yet
recorded) and is never left behind, because the decision is written in the same transaction.
jobs: queued -> running -> done | failed; ``cancelled`` when newer instances arrive before the
job started (the series is re-evaluated when it closes again).
deliveries: pending -> done | failed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

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

_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, next_attempt_at);
"""


# -- the patients' courses (issue 9) -------------------------------------------------------
# Kept in its own migration-style function (_migrate_patient_scans) so that it slots into the
# schema-version migrations (PRAGMA user_version) when they land; idempotent until then.
_PATIENT_SCANS_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS patient_scans_patient ON patient_scans(issuer_of_patient_id, patient_id);
"""


def _migrate_patient_scans(conn: sqlite3.Connection) -> None:
    """Add the patient_scans table (each analysed scan's measurements by patient)."""
    conn.executescript(_PATIENT_SCANS_SCHEMA)


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


class StateStore:
    """Thread-safe access to the node's state (one SQLite connection per thread)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all_connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        conn = self._conn()
        conn.executescript(_SCHEMA)
        _migrate_patient_scans(conn)

    # -- connection plumbing -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.db_path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            self._local.sync = "FULL"
            with self._connections_lock:
                self._all_connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Cursor]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on error."""
        conn = self._conn()
        wanted = "FULL" if durable else "NORMAL"
        if self._local.sync != wanted:
            conn.execute(f"PRAGMA synchronous={wanted}")
            self._local.sync = wanted
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
        return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close every connection (call when all threads using the store have stopped)."""
        with self._connections_lock:
            for conn in self._all_connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all_connections.clear()
        self._local = threading.local()

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
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?)",
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
            "SELECT * FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)
        )
        return InstanceRecord(*rows[0]) if rows else None

    def series_instances(self, series_uid: str) -> list[InstanceRecord]:
        rows = self._query(
            "SELECT * FROM instances WHERE series_uid=? ORDER BY path", (series_uid,)
        )
        return [InstanceRecord(*r) for r in rows]

    def series(self, series_uid: str) -> SeriesRecord | None:
        rows = self._query("SELECT * FROM series WHERE series_uid=?", (series_uid,))
        return SeriesRecord(*rows[0]) if rows else None

    def series_in_state(self, *states: str) -> list[SeriesRecord]:
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT * FROM series WHERE state IN ({marks})", states)
        return [SeriesRecord(*r) for r in rows]

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
                    "UPDATE series SET state=?, reason=? WHERE series_uid=?",
                    (SERIES_SKIPPED, reason, series_uid),
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
                "UPDATE series SET state=?, reason=? WHERE series_uid=?",
                (SERIES_QUEUED, reason, series_uid),
            )
        return self.job(job_id)

    # -- jobs ----------------------------------------------------------------------------
    def job(self, job_id: int) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return JobRecord(*rows[0]) if rows else None

    def jobs_for_series(self, series_uid: str) -> list[JobRecord]:
        rows = self._query("SELECT * FROM jobs WHERE series_uid=? ORDER BY id", (series_uid,))
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
                "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?)",
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

    def requeue_running_jobs(self) -> list[JobRecord]:
        """Start-up: jobs left ``running`` by a crash go back to ``queued``."""
        with self._tx() as cur:
            ids = [r[0] for r in cur.execute(
                "SELECT id FROM jobs WHERE state=?", (JOB_RUNNING,)).fetchall()]
            cur.execute(
                "UPDATE jobs SET state=?, started_at=NULL WHERE state=?", (JOB_QUEUED, JOB_RUNNING)
            )
            cur.execute(
                "UPDATE series SET state=? WHERE state=?", (SERIES_QUEUED, SERIES_ANALYSING)
            )
        return [j for j in (self.job(i) for i in ids) if j is not None]

    def latest_result(self, series_uid: str, before_revision: int | None = None) -> ResultRecord | None:
        sql = "SELECT * FROM results WHERE series_uid=?"
        params: list = [series_uid]
        if before_revision is not None:
            sql += " AND revision<?"
            params.append(before_revision)
        rows = self._query(sql + " ORDER BY revision DESC LIMIT 1", params)
        return _result(rows[0]) if rows else None

    def results_for_series(self, series_uid: str) -> list[ResultRecord]:
        rows = self._query(
            "SELECT * FROM results WHERE series_uid=? ORDER BY revision", (series_uid,)
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
            "SELECT * FROM patient_scans p WHERE patient_id=? AND issuer_of_patient_id=?"
            " AND revision=(SELECT MAX(revision) FROM patient_scans q"
            "               WHERE q.series_uid=p.series_uid)"
            " ORDER BY recorded_at, series_uid",
            (patient_id, issuer_of_patient_id),
        )
        return [_patient_scan(r) for r in rows]

    def all_patient_scans(self) -> list[PatientScan]:
        """Every patient's scans (latest revision of each series), by patient and time."""
        rows = self._query(
            "SELECT * FROM patient_scans p WHERE revision=(SELECT MAX(revision) FROM"
            " patient_scans q WHERE q.series_uid=p.series_uid)"
            " ORDER BY issuer_of_patient_id, patient_id, acquired_at, recorded_at"
        )
        return [_patient_scan(r) for r in rows]

    def patient_of_study(self, study_uid: str) -> tuple[str, str] | None:
        """(patient_id, issuer_of_patient_id) of an analysed study, None if unknown."""
        rows = self._query(
            "SELECT patient_id, issuer_of_patient_id FROM patient_scans WHERE study_uid=?"
            " ORDER BY recorded_at DESC LIMIT 1", (study_uid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def recent_results(self, limit: int = 20) -> list[ResultRecord]:
        rows = self._query("SELECT * FROM results ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_result(r) for r in rows]

    def jobs_in_state(self, *states: str) -> list[JobRecord]:
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)
        return [JobRecord(*r) for r in rows]

    def activity_since(self, since: float) -> tuple[list[JobRecord], list[DeliveryRecord]]:
        """Jobs finished and deliveries created since ``since`` (the status page's charts)."""
        jobs = self._query(
            "SELECT * FROM jobs WHERE finished_at>=? ORDER BY finished_at", (since,))
        deliveries = self._query(
            "SELECT * FROM deliveries WHERE created_at>=? ORDER BY id", (since,))
        return [JobRecord(*r) for r in jobs], [DeliveryRecord(*r) for r in deliveries]

    # -- deliveries ----------------------------------------------------------------------
    def due_deliveries(self, now: float | None = None) -> list[DeliveryRecord]:
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT * FROM deliveries WHERE state=? AND next_attempt_at<=? ORDER BY id",
            (DELIVERY_PENDING, now),
        )
        return [DeliveryRecord(*r) for r in rows]

    def next_delivery_due_at(self) -> float | None:
        row = self._query(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state=?", (DELIVERY_PENDING,)
        )
        return row[0][0]

    def recent_series(self, limit: int = 20) -> list[SeriesRecord]:
        rows = self._query(
            "SELECT * FROM series ORDER BY last_instance_at DESC LIMIT ?", (limit,)
        )
        return [SeriesRecord(*r) for r in rows]

    def recent_jobs(self, limit: int = 20) -> list[JobRecord]:
        rows = self._query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [JobRecord(*r) for r in rows]

    def state_counts(self) -> dict[str, dict[str, int]]:
        """How many series, jobs and deliveries are in each state."""
        counts: dict[str, dict[str, int]] = {}
        for table in ("series", "jobs", "deliveries"):
            rows = self._query(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
            counts[table] = {state: count for state, count in rows}
        return counts

    def deliveries(self, *, job_id: int | None = None, state: str | None = None) -> list[DeliveryRecord]:
        sql, params = "SELECT * FROM deliveries WHERE 1=1", []
        if job_id is not None:
            sql, params = sql + " AND job_id=?", params + [job_id]
        if state is not None:
            sql, params = sql + " AND state=?", params + [state]
        return [DeliveryRecord(*r) for r in self._query(sql + " ORDER BY id", params)]

    def record_delivery_attempts(
        self, outcomes: Sequence[tuple[int, str | None]], *, max_attempts: int,
        retry_delay_s, now: float | None = None,
    ) -> None:
        """Record one attempt for each ``(delivery_id, error)``; error None means delivered.

        A failed attempt is rescheduled ``retry_delay_s(attempt_number)`` seconds later, or
        marked ``failed`` (kept, files not deleted) once ``max_attempts`` is reached.
        """
        now = time.time() if now is None else now
        with self._tx() as cur:
            for delivery_id, error in outcomes:
                attempts = cur.execute(
                    "SELECT attempts FROM deliveries WHERE id=?", (delivery_id,)
                ).fetchone()[0] + 1
                if error is None:
                    cur.execute(
                        "UPDATE deliveries SET state=?, attempts=?, done_at=?, last_error=NULL"
                        " WHERE id=?",
                        (DELIVERY_DONE, attempts, now, delivery_id),
                    )
                elif attempts >= max_attempts:
                    cur.execute(
                        "UPDATE deliveries SET state=?, attempts=?, last_error=? WHERE id=?",
                        (DELIVERY_FAILED, attempts,
                         f"{error} (gave up after {attempts} attempts)", delivery_id),
                    )
                else:
                    cur.execute(
                        "UPDATE deliveries SET attempts=?, last_error=?, next_attempt_at=?"
                        " WHERE id=?",
                        (attempts, error, now + retry_delay_s(attempts + 1), delivery_id),
                    )

    # -- retention -----------------------------------------------------------------------
    def series_due_for_purge(self, cutoff: float) -> list[tuple[SeriesRecord, bool]]:
        """Series whose spool may go: finished (done/skipped), quiet since before ``cutoff``,
        not yet purged, nothing pending, and for done ones every delivery done before the
        cutoff. The flag says whether the outbox may go too (only when there were deliveries
        and all are done; without destinations the outbox is where the results stay)."""
        rows = self._query(
            "SELECT s.*, (SELECT COUNT(*) FROM deliveries d WHERE d.series_uid=s.series_uid),"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.series_uid=s.series_uid AND"
            "   (d.state!=? OR d.done_at>=?)),"
            " (SELECT COUNT(*) FROM jobs j WHERE j.series_uid=s.series_uid AND j.state IN (?,?))"
            " FROM series s WHERE s.purged_at IS NULL AND s.state IN (?,?) AND s.last_instance_at<?",
            (DELIVERY_DONE, cutoff, JOB_QUEUED, JOB_RUNNING, SERIES_DONE, SERIES_SKIPPED, cutoff),
        )
        due = []
        for row in rows:
            series, total, not_done, active = SeriesRecord(*row[:10]), row[10], row[11], row[12]
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


def _insert_patient_scan(cur: sqlite3.Cursor, scan: PatientScan) -> None:
    cur.execute(
        "INSERT OR REPLACE INTO patient_scans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (scan.series_uid, scan.revision, scan.study_uid, scan.patient_id,
         scan.issuer_of_patient_id, scan.acquired_at, scan.measurements_json,
         *(scan.sr_uids or (None, None, None)), *(scan.seg_uids or (None, None)),
         scan.recorded_at),
    )


def _patient_scan(row: tuple) -> PatientScan:
    return PatientScan(
        series_uid=row[0], revision=row[1], study_uid=row[2], patient_id=row[3],
        issuer_of_patient_id=row[4], acquired_at=row[5], measurements_json=row[6],
        sr_uids=(row[7], row[8], row[9]) if row[9] else None,
        seg_uids=(row[10], row[11]) if row[11] else None, recorded_at=row[12],
    )


def _result(row: tuple) -> ResultRecord:
    return ResultRecord(
        series_uid=row[0], revision=row[1], job_id=row[2], measurements_json=row[3],
        sr_uids=(row[4], row[5], row[6]), outbox_dir=row[7], created_at=row[8],
    )
