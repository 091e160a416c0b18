"""Series completion: a series closes after ``series.quiet_period_s`` without a new instance.

One apscheduler date job per open series (id ``close:<series uid>``). Each stored instance
only updates an in-memory "last seen" time; when the job fires early it re-arms itself for
the rest of the quiet period, so the receiver's hot path never touches the scheduler for a
series already armed. On close, headers are read from the spool (no pixel data), node.rules
decides, and the decision (job queued or series skipped with the reason) is written in one
transaction by ``StateStore.close_series``. Late instances reopen a series (see node.store).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Callable

import pydicom
from apscheduler.schedulers.base import BaseScheduler

from node.config import Settings
from node.rules import evaluate_series
from node.store import SERIES_OPEN, JobRecord, StateStore

LOG = logging.getLogger(__name__)


def read_header(path: str) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


class SeriesTracker:
    def __init__(
        self, store: StateStore, scheduler: BaseScheduler, settings: Settings,
        on_job_queued: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.settings = settings
        self.quiet_s = settings.series.quiet_period_s
        self.on_job_queued = on_job_queued
        self._last_seen: dict[str, float] = {}
        self._armed: set[str] = set()
        self._lock = threading.Lock()

    def instance_stored(self, stored) -> None:
        """Receiver callback (node.receiver.StoredInstance): (re)start the quiet period."""
        self.touch(stored.series_uid, time.monotonic())

    def touch(self, series_uid: str, seen_monotonic: float) -> None:
        with self._lock:
            self._last_seen[series_uid] = max(seen_monotonic, self._last_seen.get(series_uid, 0))
            if series_uid in self._armed:
                return
            self._armed.add(series_uid)
        self._schedule(series_uid, self.quiet_s)

    def rearm_open_series(self) -> int:
        """Start-up: arm a timer for every series still open (from its stored last time)."""
        series = self.store.series_in_state(SERIES_OPEN)
        now_wall, now_mono = time.time(), time.monotonic()
        for s in series:
            self.touch(s.series_uid, now_mono - max(0.0, now_wall - s.last_instance_at))
        return len(series)

    def _schedule(self, series_uid: str, delay_s: float) -> None:
        self.scheduler.add_job(
            self._fire, "date", run_date=datetime.now() + timedelta(seconds=max(delay_s, 0)),
            args=[series_uid], id=f"close:{series_uid}", replace_existing=True,
            misfire_grace_time=None,
        )

    def _fire(self, series_uid: str) -> None:
        with self._lock:
            remaining = self._last_seen.get(series_uid, 0) + self.quiet_s - time.monotonic()
            if remaining > 0:
                self._schedule(series_uid, remaining)
                return
            self._armed.discard(series_uid)
        try:
            self.close(series_uid)
        except Exception:
            LOG.exception("series %s: closing failed; will retry", series_uid)
            self.touch(series_uid, time.monotonic())

    def close(self, series_uid: str) -> JobRecord | None:
        """Evaluate and record the decision for a quiet open series (also callable directly)."""
        before = self.store.series(series_uid)
        if before is None or before.state != SERIES_OPEN:
            return None
        instances = self.store.series_instances(series_uid)
        headers = []
        for inst in instances:
            try:
                headers.append(read_header(inst.path))
            except Exception as exc:
                LOG.warning("series %s: cannot read header of %s: %s", series_uid,
                            inst.sop_instance_uid, exc)
        decision = evaluate_series(headers, self.settings.selection)
        outcome = self.store.close_series(
            series_uid, quiet_since=time.time() - self.quiet_s + 1e-3,
            instance_count=len(instances), selected=decision.selected, reason=decision.reason,
        )
        if outcome is False:  # touched meanwhile: a later timer decides
            with self._lock:
                self._last_seen.setdefault(series_uid, time.monotonic())
            self.touch(series_uid, time.monotonic())
            return None
        if outcome is None:
            LOG.info("series %s: skipped (%s)", series_uid, decision.reason)
            return None
        LOG.info("series %s: job %s queued, revision %s (%s)", series_uid, outcome.id,
                 outcome.revision, decision.reason)
        if self.on_job_queued is not None:
            self.on_job_queued(outcome)
        return outcome
