"""The node: receiver + state store + series tracker + worker + sender + retention, wired.

``Node(settings).start()`` reconciles the storage root with the state store, then listens.
Reconciliation (idempotent, before the receiver opens): temp files and partial receptions are
removed (never acknowledged); spool files without a row are adopted (their header read
again); jobs left ``running`` are re-queued (or failed, after ``MAX_JOB_CRASHES`` crashes).
There are no timers to re-arm: the pollers (series close, job claim, deliveries, retention)
ask the state store what is due, so open series and pending deliveries resume on the first
tick. Signal handling belongs to the CLI: it calls ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from node.config import Settings
from node.poller import Poller
from node.receiver import Receiver, StoreContext
from node.sender import DeliveryService
from node.series_tracker import SeriesTracker, read_header
from node.spool import Spool
from node.store import DB_FILENAME, SERIES_OPEN, InstanceRecord, StateStore
from node.uids import InvalidUID, sanitize_uid
from node.worker import AnalyzeFn, Worker

LOG = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600
ADOPTED_CALLING_AE = "(adopted)"


class Node:
    def __init__(
        self, settings: Settings, *, analyze: AnalyzeFn | None = None,
        bad_input_errors: tuple[type[BaseException], ...] | None = None, worker_threads: int = 1,
    ) -> None:
        if analyze is None:
            from node.analysis import analyze_series as analyze
        if bad_input_errors is None:
            from node.volume import VolumeError
            bad_input_errors = (VolumeError,)
        self.settings = settings
        root = Path(settings.storage.root)
        self.spool = Spool(root, settings.storage.min_free_mb)
        self.store = StateStore(root / DB_FILENAME)
        self.sender = DeliveryService(self.store, settings)
        self.worker = Worker(self.store, self.spool, settings, analyze,
                             bad_input_errors=bad_input_errors, on_deliveries=self.sender.kick,
                             threads=worker_threads)
        self.tracker = SeriesTracker(self.store, settings, on_job_queued=self.worker.notify)
        self.retention = Poller("retention", self._retention_tick,
                                max_interval_s=RETENTION_INTERVAL_S)
        self.receiver = Receiver(settings, StoreContext(
            self.spool, self.store, on_instance=self.tracker.instance_stored))
        self.status_page = None
        if settings.status_page.enabled:
            from node.status_page import StatusPageServer

            self.status_page = StatusPageServer(settings, self.store)
        self._stopped = threading.Event()
        self._started = False

    @property
    def port(self) -> int:
        return self.receiver.port

    def start(self) -> None:
        self.reconcile()
        self.worker.start()
        self.tracker.start()
        self.sender.start()
        self.retention.start()
        if self.status_page is not None:   # up before the DICOM port accepts
            self.status_page.start()
        self.receiver.start()
        self._started = True

    def _retention_tick(self) -> None:
        self.apply_retention()

    def reconcile(self) -> None:
        removed = self.spool.remove_temp_files()
        adopted = self._adopt_orphans()
        requeued, crashed = self.store.requeue_running_jobs()
        for job in crashed:
            LOG.error("series %s: job %s failed: %s", job.series_uid, job.id, job.reason)
        open_series = len(self.store.series_in_state(SERIES_OPEN))
        pending = len(self.store.delivery_due_by_destination())
        LOG.info("start-up: %d temp file(s) removed, %d file(s) adopted, %d job(s) re-queued "
                 "(%s), %d job(s) failed after repeated crashes, %d open series, deliveries "
                 "pending for %d destination(s)", removed, adopted, len(requeued),
                 ", ".join(f"job {j.id} series {j.series_uid}" for j in requeued) or "none",
                 len(crashed), open_series, pending)

    def _adopt_orphans(self) -> int:
        known = self.store.known_instance_paths()
        adopted = 0
        for path in self.spool.iter_instance_files():
            if str(path) in known:
                continue
            try:
                ds = read_header(str(path))
                study = sanitize_uid(ds.StudyInstanceUID, "StudyInstanceUID")
                series = sanitize_uid(ds.SeriesInstanceUID, "SeriesInstanceUID")
                sop = sanitize_uid(ds.SOPInstanceUID, "SOPInstanceUID")
                if self.spool.instance_path(study, series, sop) != path:
                    raise InvalidUID("UIDs do not match the file's place in the spool")
                rec = InstanceRecord(sop, series, study, str(ds.SOPClassUID), str(path),
                                     path.stat().st_size, path.stat().st_mtime, ADOPTED_CALLING_AE)
            except Exception as exc:
                kept = self.spool.quarantine_file(path, f"unreadable spool file at start-up: {exc}")
                LOG.warning("spool file %s quarantined as %s: %s", path, kept.path, exc)
                continue
            self.store.record_instance(rec)
            adopted += 1
            LOG.info("series %s: adopted instance %s found in the spool", series, sop)
        return adopted

    def apply_retention(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cutoff = now - self.settings.storage.retention_days * 86400
        purged = 0
        for series, with_outbox in self.store.series_due_for_purge(cutoff):
            self.spool.remove_series(series.series_uid, outbox=with_outbox)
            self.store.mark_purged(series.series_uid, now)
            purged += 1
            LOG.info("series %s: spool%s removed (retention)", series.series_uid,
                     " and outbox" if with_outbox else "")
        return purged

    def stop(self, job_grace_s: float = 30) -> None:
        """Stop receiving and polling; a job still running after ``job_grace_s`` is handed
        back to the queue (no crash counted) and runs again at the next start."""
        if self._started:
            if self.status_page is not None:
                self.status_page.stop()
            self.receiver.stop()
            self.tracker.stop()
            self.retention.stop()
            self.worker.stop(job_grace_s)
            self.sender.stop()
            self.store.close()
            self._started = False
        self._stopped.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until ``stop()`` was called (True) or the timeout passed (False)."""
        return self._stopped.wait(timeout_s)

    def run_forever(self) -> None:
        """Start (if needed) and return once ``stop()`` is called (from a signal handler)."""
        if not self._started:
            self.start()
        self._stopped.wait()
