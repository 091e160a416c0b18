"""The state store: schema versions and migrations (an old store opens in the new node),
named columns, and a bounded number of SQLite connections whatever the number of threads."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from node.store import (
    DELIVERY_FAILED, FAILURE_PERMANENT, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, MAX_JOB_CRASHES,
    MIGRATIONS, SCHEMA_VERSION, SERIES_FAILED, SERIES_OPEN, DeliveryOutcome, DeliveryRequest,
    InstanceRecord, SchemaTooNew, StateStore,
)

# The schema of main at 1b62895, before versioning (user_version 0), verbatim.
SCHEMA_BEFORE_VERSIONING = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    received_at REAL NOT NULL, calling_ae TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
    first_instance_at REAL NOT NULL, last_instance_at REAL NOT NULL,
    instance_count INTEGER NOT NULL, revision INTEGER NOT NULL DEFAULT 0,
    analysed_instance_count INTEGER NOT NULL DEFAULT 0, purged_at REAL);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, series_uid TEXT NOT NULL, revision INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, reason TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS results (
    series_uid TEXT NOT NULL, revision INTEGER NOT NULL, job_id INTEGER NOT NULL,
    measurements_json TEXT NOT NULL, sr_study_uid TEXT NOT NULL, sr_series_uid TEXT NOT NULL,
    sr_sop_uid TEXT NOT NULL, outbox_dir TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (series_uid, revision));
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, series_uid TEXT NOT NULL,
    path TEXT NOT NULL, sop_class_uid TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, last_error TEXT, created_at REAL NOT NULL, done_at REAL);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, next_attempt_at);
"""


def make_old_store(path: Path) -> None:
    """A store as main at 1b62895 left it: an open series, a done job with its result and a
    pending delivery, a job left running by a crash."""
    now = time.time()
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_BEFORE_VERSIONING)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("INSERT INTO instances VALUES (?,?,?,?,?,?,?,?)",
                 ("1.2.3.1", "1.2.3", "1.2", "1.2.840.10008.5.1.4.1.1.2", "/x/1.dcm", 10,
                  now - 100, "SCANNER"))
    conn.execute("INSERT INTO series VALUES (?,?,?,?,?,?,?,?,?,?)",
                 ("1.2.3", "1.2", SERIES_OPEN, None, now - 100, now - 100, 1, 0, 0, None))
    conn.execute("INSERT INTO series VALUES (?,?,?,?,?,?,?,?,?,?)",
                 ("1.2.4", "1.2", "done", "selected", now - 900, now - 800, 5, 1, 5, None))
    conn.execute("INSERT INTO series VALUES (?,?,?,?,?,?,?,?,?,?)",
                 ("1.2.5", "1.2", "analysing", "selected", now - 700, now - 600, 5, 0, 0, None))
    conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (1, "1.2.4", 1, "done", 1, None, 5, now - 790, now - 780, now - 700))
    conn.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (2, "1.2.5", 1, JOB_RUNNING, 1, None, 5, now - 590, now - 580, None))
    conn.execute("INSERT INTO results VALUES (?,?,?,?,?,?,?,?,?)",
                 ("1.2.4", 1, 1, '{"x": 1}', "1.2", "9.1", "9.2", "/out/1.2.4/1", now - 700))
    conn.execute("INSERT INTO deliveries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (1, 1, "1.2.4", "/out/1.2.4/1/sr.dcm", "1.2.840.10008.5.1.4.1.1.88.34", "9.2",
                  "PACS@127.0.0.1:104", "pending", 2, now - 10, "connection refused",
                  now - 700, None))
    conn.commit()
    conn.close()


def test_old_store_opens_and_is_migrated(tmp_path):
    db = tmp_path / "old.sqlite3"
    make_old_store(db)
    store = StateStore(db)
    try:
        assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        series = store.series("1.2.3")
        assert series.state == SERIES_OPEN and series.instance_count == 1
        assert series.closed_at is None
        assert store.instance("1.2.3.1").calling_ae == "SCANNER"
        assert store.latest_result("1.2.4").sr_uids == ("1.2", "9.1", "9.2")
        (delivery,) = store.deliveries()
        assert delivery.attempts == 2 and delivery.last_error == "connection refused"
        assert delivery.failure_kind is None
        assert [s.series_uid for s in store.series_due_to_close(30)] == ["1.2.3"]
        requeued, failed = store.requeue_running_jobs()
        assert [j.id for j in requeued] == [2] and failed == []
        assert store.job(2).state == JOB_QUEUED and store.job(2).crashes == 1
    finally:
        store.close()
    # opening again runs nothing more and changes nothing
    again = StateStore(db)
    try:
        assert again.schema_version == SCHEMA_VERSION and again.job(2).crashes == 1
    finally:
        again.close()


def test_store_from_a_newer_node_is_refused(tmp_path):
    db = tmp_path / "new.sqlite3"
    StateStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}"):
        StateStore(db)


def test_every_migration_is_a_function_and_versions_count_them(tmp_path):
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 2
    assert all(callable(m) for m in MIGRATIONS)
    store = StateStore(tmp_path / "fresh.sqlite3")
    store.close()
    conn = sqlite3.connect(tmp_path / "fresh.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_are_bounded_whatever_the_number_of_threads(tmp_path):
    store = StateStore(tmp_path / "db.sqlite3", pool_size=3)
    try:
        before = _fds()
        errors: list[BaseException] = []

        def one_thread(i: int) -> None:
            try:
                store.record_instance(InstanceRecord(
                    f"1.2.{i}", "1.9", "1.8", "1.2.840.10008.5.1.4.1.1.2", f"/x/{i}", 1,
                    time.time(), "T"))
                assert store.instance(f"1.2.{i}") is not None
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        for wave in range(5):  # 5 x 40 short-lived threads, as pynetdicom runs associations
            threads = [threading.Thread(target=one_thread, args=(wave * 40 + i,))
                       for i in range(40)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert errors == []
        assert store.open_connections() <= 3
        assert store.series("1.9").instance_count == 200
        assert _fds() - before <= 2 * 3  # each connection: the database and its WAL
    finally:
        store.close()


def _job_with_delivery(store: StateStore, series_uid: str = "9.9"):
    store.record_instance(InstanceRecord(series_uid + ".1", series_uid, "8.8", "1.2.3", "x", 1,
                                         time.time() - 60, "T"))
    job = store.close_series(series_uid, quiet_since=time.time(), instance_count=1,
                             selected=True, reason="test")
    assert store.claim_next_job().id == job.id
    store.complete_job(job.id, measurements_json="{}", sr_uids=("1", "2", "3"),
                       outbox_dir="/o", deliveries=[
                           DeliveryRequest("/o/a.dcm", "1.2", "3.4", "A@127.0.0.1:1"),
                           DeliveryRequest("/o/a.dcm", "1.2", "3.4", "B@127.0.0.1:2")])
    return job


def test_permanent_failure_fails_at_once_and_summaries(tmp_path):
    store = StateStore(tmp_path / "db.sqlite3")
    try:
        job = _job_with_delivery(store)
        a, b = store.deliveries(job_id=job.id)
        assert set(store.delivery_due_by_destination()) == {"A@127.0.0.1:1", "B@127.0.0.1:2"}
        (summary,) = store.record_delivery_attempts(
            [DeliveryOutcome(a.id, "called AE title not recognised", permanent=True),
             DeliveryOutcome(b.id, "connection refused")],
            max_attempts=5, retry_delay_s=lambda n: 60)
        assert (summary.pending, summary.done, summary.failed) == (1, 0, 1)
        a, b = store.deliveries(job_id=job.id)
        assert a.state == DELIVERY_FAILED and a.failure_kind == FAILURE_PERMANENT
        assert "called AE title not recognised" in a.last_error
        assert b.state == "pending" and b.next_attempt_at > time.time() + 50
        assert store.due_deliveries(destination="B@127.0.0.1:2") == []
    finally:
        store.close()


def test_a_job_that_crashed_the_process_twice_is_failed(tmp_path):
    store = StateStore(tmp_path / "db.sqlite3")
    try:
        store.record_instance(InstanceRecord("7.7.1", "7.7", "8.8", "1.2.3", "x", 1,
                                             time.time() - 60, "T"))
        job = store.close_series("7.7", quiet_since=time.time(), instance_count=1,
                                 selected=True, reason="test")
        for crash in range(1, MAX_JOB_CRASHES + 1):
            assert store.claim_next_job().id == job.id
            requeued, failed = store.requeue_running_jobs()  # as at start-up after a crash
            if crash < MAX_JOB_CRASHES:
                assert [j.id for j in requeued] == [job.id] and failed == []
        assert [j.id for j in failed] == [job.id] and requeued == []
        final = store.job(job.id)
        assert final.state == JOB_FAILED and final.crashes == MAX_JOB_CRASHES
        assert "stopped 2 times while analysing" in final.reason
        assert store.series("7.7").state == SERIES_FAILED
        assert store.claim_next_job() is None
    finally:
        store.close()
