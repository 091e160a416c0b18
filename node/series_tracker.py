"""Series completion: a series closes after ``series.quiet_period_s`` without a new instance.

No timer per series: the state store holds each series' last-instance time (UTC epoch) and a
poller (node.poller) asks it which open series are quiet (``series_due_to_close``), then
sleeps until the next one will be (``next_series_close_at``), at most ``MAX_INTERVAL_S``. The
receiver's callback only wakes the poller when a series starts (one INFO line, "receiving"),
so the hot path never touches a timer, and after a restart open series close from the store
like any other. On close, headers are read from the spool (no pixel data), node.rules
decides, and the decision (job queued or series skipped with the reason) is written in one
transaction by ``StateStore.close_series``, which refuses if an instance arrived meanwhile
(the next tick decides). Late instances reopen a series (see node.store).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import pydicom

from node.config import Settings
from node.poller import Poller
from node.rules import evaluate_series
from node.store import SERIES_OPEN, JobRecord, StateStore

LOG = logging.getLogger(__name__)

MAX_INTERVAL_S = 2.0  # a safety net: the next close time comes from the store


def read_header(path: str) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


class SeriesTracker:
    def __init__(
        self, store: StateStore, settings: Settings,
        on_job_queued: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.quiet_s = settings.series.quiet_period_s
        self.on_job_queued = on_job_queued
        self._receiving: set[str] = set()  # series announced as receiving (for the log only)
        self._lock = threading.Lock()
        self.poller = Poller("series-close", self.tick,
                             max_interval_s=min(MAX_INTERVAL_S, self.quiet_s))

    def start(self) -> None:
        self.poller.start()

    def stop(self, timeout_s: float = 30) -> None:
        self.poller.stop(timeout_s)

    def instance_stored(self, stored) -> None:
        """Receiver callback (node.receiver.StoredInstance): log and wake when a series starts."""
        with self._lock:
            if stored.series_uid in self._receiving:
                return
            self._receiving.add(stored.series_uid)
        LOG.info("series %s: receiving (open; closes after %g s without a new instance)",
                 stored.series_uid, self.quiet_s)
        self.poller.wake()

    def tick(self) -> float | None:
        """Close every quiet open series; seconds until the next one falls quiet."""
        for series in self.store.series_due_to_close(self.quiet_s):
            try:
                self.close(series.series_uid)
            except Exception:
                LOG.exception("series %s: closing failed; retried next tick", series.series_uid)
        next_at = self.store.next_series_close_at(self.quiet_s)
        return None if next_at is None else next_at - time.time()

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
            series_uid, quiet_since=before.last_instance_at, instance_count=len(instances),
            selected=decision.selected, reason=decision.reason,
        )
        if outcome is False:  # an instance arrived meanwhile: a later tick decides
            return None
        with self._lock:
            self._receiving.discard(series_uid)
        quiet = time.time() - before.last_instance_at
        if outcome is None:
            LOG.info("series %s: closed, %d instance(s), quiet %.1f s: skipped (%s)",
                     series_uid, len(instances), quiet, decision.reason)
            return None
        LOG.info("series %s: closed, %d instance(s), quiet %.1f s: job %s queued, revision %s "
                 "(%s)", series_uid, len(instances), quiet, outcome.id, outcome.revision,
                 decision.reason)
        if self.on_job_queued is not None:
            self.on_job_queued(outcome)
        return outcome
