"""The analysis worker: takes queued jobs, runs the analysis, records results and deliveries.

The analysis function is injected (``node.analysis.analyze_series`` in production). Outputs
are written to ``outbox/<series>/.<revision>.partial-<job>`` and renamed to
``outbox/<series>/<revision>`` when complete, then the result, the job's ``done`` state and
one delivery row per output file per destination that gets its kind
(node.delivery_plan) are committed in one transaction. A crash
at any point before that commit leaves the job ``running``; start-up re-queues it and the
rerun (deterministic output UIDs) replaces the outbox directory, so the job completes exactly
once and nothing partial is ever delivered.

Errors: ``bad_input_errors`` (node.volume.VolumeError) fail the job with the reason, no retry;
``OutputError`` (an output could not be encoded or written: SEG/SR) fails the job with the
reason, no retry; any other exception is a bug: logged with its traceback, job failed with
the reason, the worker goes on with the next job. A job that takes the whole process down is
re-queued at start-up, and failed after ``node.store.MAX_JOB_CRASHES`` such crashes. On a
clean stop, a job still running is handed back (``StateStore.release_jobs``) unharmed.

Logs: one INFO line when a series starts analysing and one when it is done or failed, with
the job id and series UID (never patient data).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import pydicom

from node.config import Settings
from node.delivery_plan import files_for, kind_of
from node.spool import Spool, fsync_dir
from node.store import DeliveryRequest, JobRecord, StateStore

LOG = logging.getLogger(__name__)

AnalyzeFn = Callable[..., object]


class OutputError(Exception):
    """An output (SEG, SR, ...) could not be encoded or written: the job fails, no retry."""


class Worker:
    def __init__(
        self, store: StateStore, spool: Spool, settings: Settings, analyze: AnalyzeFn, *,
        bad_input_errors: tuple[type[BaseException], ...] = (),
        on_deliveries: Callable[[], None] | None = None, threads: int = 1,
    ) -> None:
        self.store = store
        self.spool = spool
        self.settings = settings
        self.analyze = analyze
        self.bad_input_errors = bad_input_errors
        self.on_deliveries = on_deliveries
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._running: set[int] = set()
        self._running_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def notify(self, *_args) -> None:
        """A job was queued: wake an idle worker thread."""
        self._wake.set()

    def stop(self, timeout_s: float = 30) -> None:
        """Stop claiming jobs; wait up to ``timeout_s`` for running ones, then hand back
        (re-queue without counting a crash) those still running."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        with self._running_lock:
            unfinished = sorted(self._running)
        if unfinished:
            released = self.store.release_jobs(unfinished)
            LOG.info("stopping: %d running job(s) handed back to the queue (%s)", released,
                     ", ".join(f"job {j}" for j in unfinished))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next_job()
            except Exception:
                LOG.exception("cannot claim a job")
                job = None
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            with self._running_lock:
                self._running.add(job.id)
            try:
                self.run_job(job)
            finally:
                with self._running_lock:
                    self._running.discard(job.id)

    def run_job(self, job: JobRecord) -> None:
        tag = f"series {job.series_uid}: job {job.id} revision {job.revision}"
        LOG.info("%s: analysing (attempt %s)", tag, job.attempts)
        final_dir = self.spool.outbox_path(job.series_uid, job.revision)
        work_dir = final_dir.parent / f".{job.revision}.partial-{job.id}"
        try:
            paths = [Path(i.path) for i in self.store.series_instances(job.series_uid)]
            predecessor = self.store.latest_result(job.series_uid, before_revision=job.revision)
            shutil.rmtree(work_dir, ignore_errors=True)
            work_dir.mkdir(parents=True)
            output = self.analyze(
                paths, work_dir, self.settings, revision=job.revision,
                predecessor_sr=predecessor.sr_uids if predecessor else None,
                earlier_scans=self.store.patient_scans,
            )
            measurements = Path(output.measurements_json).read_text(encoding="utf-8")
            for f in work_dir.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(work_dir)
            if final_dir.exists():  # left by an earlier attempt that crashed before its commit
                shutil.rmtree(final_dir)
            os.replace(work_dir, final_dir)
            fsync_dir(final_dir.parent)
            outputs = [final_dir / Path(p).name for p in output.output_files]
            kinds = {p.name: kind_of(p.name) for p in outputs}
            deliveries = []
            headers = {}
            for dest in self.settings.destinations:
                for out in files_for(dest, outputs, kinds):
                    if out not in headers:
                        headers[out] = pydicom.dcmread(out, stop_before_pixels=True)
                    ds = headers[out]
                    deliveries.append(DeliveryRequest(
                        str(out), str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(dest)))
            self.store.complete_job(
                job.id, measurements_json=measurements, sr_uids=tuple(output.sr_uids),
                outbox_dir=str(final_dir), deliveries=deliveries,
                patient_scan=getattr(output, "patient_scan", None),
            )
        except self.bad_input_errors as exc:
            LOG.warning("%s: failed: bad input, not analysed: %s", tag, exc)
            self._fail(job, f"bad input: {exc}", work_dir)
            return
        except OutputError as exc:
            LOG.error("%s: failed: %s", tag, exc, exc_info=True)
            self._fail(job, f"cannot write outputs: {exc}", work_dir)
            return
        except Exception as exc:
            LOG.exception("%s: failed: internal error (bug)", tag)
            self._fail(job, f"internal error: {exc!r}", work_dir)
            return
        LOG.info("%s: analysed, %d output(s), %d deliveries queued%s", tag, len(outputs),
                 len(deliveries), "" if deliveries else " (no destinations: results stay in "
                 f"{final_dir})")
        if deliveries and self.on_deliveries is not None:
            self.on_deliveries()
        self._reissue_later_report(getattr(output, "course", None), tag)

    def _reissue_later_report(self, course, tag: str) -> None:
        """A late prior: the scan acquired just after it now has another prior, so its report
        is re-issued (a new revision, amending the SR already sent)."""
        if course is None or not self.settings.course.reissue_later_reports:
            return
        if course.current_index >= len(course.scans) - 1:
            return
        later = course.scans[course.current_index + 1]
        try:
            job = self.store.queue_reanalysis(
                later.series_uid, "re-issued: an earlier scan of the same patient arrived later")
        except Exception:
            LOG.exception("%s: cannot queue the re-issue of series %s", tag, later.series_uid)
            return
        if job is None:
            LOG.warning("%s: the report of the later series %s is not re-issued (purged, not "
                        "done or already queued)", tag, later.series_uid)
            return
        LOG.info("%s: earlier than series %s of the same patient: its report is re-issued "
                 "(job %d revision %d)", tag, later.series_uid, job.id, job.revision)
        self.notify()

    def _fail(self, job: JobRecord, reason: str, work_dir: Path) -> None:
        shutil.rmtree(work_dir, ignore_errors=True)
        try:
            self.store.fail_job(job.id, reason)
        except Exception:
            LOG.exception("job %s series %s: cannot record the failure", job.id, job.series_uid)
