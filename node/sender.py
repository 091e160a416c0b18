"""C-STORE SCU: sends files to a destination and tracks deliveries with retries.

* ``send_files(paths, destination, settings)`` sends in one association and returns a
  ``SendReport`` with every instance's response status (``lungnode send``).
* ``echo(destination, settings)`` returns the C-ECHO status, or None if unreachable.
* ``DeliveryService`` sends pending delivery rows, one association per (job, destination)
  batch; a row is done only on status 0x0000 or a warning (0xB000, 0xB006, 0xB007: logged);
  otherwise it is retried with growing delays (``delivery.*``) and, after ``max_attempts``,
  marked failed with the reason. Files are never deleted here.

TCP_NODELAY is set on every SCU socket (EVT_CONN_OPEN); without it, small response/request
exchanges wait on delayed ACKs (a 300-image send took 14 s instead of 1.3 s).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

import pydicom
from apscheduler.schedulers.base import BaseScheduler
from pynetdicom import AE, evt

from node import tls
from node.ae import configured_ae
from node.config import Destination, Settings
from node.store import StateStore

LOG = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
WARNING_STATUSES = (0xB000, 0xB006, 0xB007)  # coercion, elements discarded, mismatch
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
_FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass
class SendReport:
    destination: str
    statuses: dict[str, int | None] = field(default_factory=dict)  # path -> status
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason (not delivered)
    association_error: str | None = None

    @property
    def delivered(self) -> list[str]:
        return [p for p, s in self.statuses.items() if p not in self.errors]

    @property
    def ok(self) -> bool:
        return not self.errors and self.association_error is None


def _set_nodelay(event) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _scu_ae(settings: Settings) -> AE:
    ae = configured_ae(settings.network)
    ae.connection_timeout = settings.network.acse_timeout_s
    return ae


def _associate(ae: AE, destination: Destination):
    return ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)], tls_args=tls.client_args(destination),
    )


def echo(destination: Destination, settings: Settings) -> int | None:
    """C-ECHO ``destination``: its status (0 = success), or None if no association."""
    ae = _scu_ae(settings)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = _associate(ae, destination)
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def send_files(paths: Sequence[Path | str], destination: Destination, settings: Settings) -> SendReport:
    """Send ``paths`` in one association; every response status is recorded and checked."""
    report = SendReport(str(destination))
    datasets = {}
    for p in map(str, paths):
        try:
            datasets[p] = pydicom.dcmread(p)
        except Exception as exc:
            report.statuses[p] = None
            report.errors[p] = f"cannot read: {exc}"
    ae = _scu_ae(settings)
    contexts: dict[str, set[str]] = defaultdict(set)
    for ds in datasets.values():
        contexts[str(ds.SOPClassUID)].add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes) + [
            s for s in _FALLBACK_SYNTAXES if s not in syntaxes])
    if not datasets:
        return report
    assoc = _associate(ae, destination)
    if not assoc.is_established:
        state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        report.association_error = f"association with {destination} {state}"
        for p in datasets:
            report.statuses[p] = None
            report.errors[p] = report.association_error
        return report
    try:
        for p, ds in datasets.items():
            try:
                rsp = assoc.send_c_store(ds)
            except Exception as exc:  # no accepted context, encoding problem...
                report.statuses[p] = None
                report.errors[p] = f"not sent: {exc}"
                continue
            status = int(rsp.Status) if "Status" in rsp else None
            report.statuses[p] = status
            if status is None:
                report.errors[p] = "no response (timeout or association lost)"
                if not assoc.is_established:
                    break
            elif status in WARNING_STATUSES:
                LOG.warning("%s accepted %s with warning status 0x%04X", destination,
                            ds.SOPInstanceUID, status)
            elif status != STATUS_SUCCESS:
                report.errors[p] = f"refused with status 0x{status:04X}"
        for p in datasets:
            if p not in report.statuses:
                report.statuses[p] = None
                report.errors[p] = "association lost before sending"
    finally:
        if assoc.is_established:
            assoc.release()
    return report


class DeliveryService:
    """Sends due deliveries; re-arms itself (apscheduler) for the next due one."""

    JOB_ID = "deliveries"

    def __init__(self, store: StateStore, settings: Settings, scheduler: BaseScheduler) -> None:
        self.store = store
        self.settings = settings
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._destinations = {str(d): d for d in settings.destinations}

    def kick(self, delay_s: float = 0) -> None:
        self.scheduler.add_job(
            self.process_due, "date", run_date=datetime.now() + timedelta(seconds=delay_s),
            id=self.JOB_ID, replace_existing=True, misfire_grace_time=None,
        )

    def process_due(self) -> None:
        with self._lock:
            due = self.store.due_deliveries()
            batches = defaultdict(list)
            for d in due:
                batches[(d.job_id, d.destination)].append(d)
            for (job_id, dest_text), rows in batches.items():
                self._send_batch(job_id, dest_text, rows)
            nxt = self.store.next_delivery_due_at()
        if nxt is not None:
            self.kick(max(0.0, nxt - time.time()))

    def _send_batch(self, job_id: int, dest_text: str, rows) -> None:
        dest = self._destinations.get(dest_text) or Destination.parse(dest_text)
        try:
            report = send_files([r.path for r in rows], dest, self.settings)
        except Exception as exc:
            LOG.exception("job %s: sending to %s failed", job_id, dest_text)
            report = SendReport(dest_text, association_error=repr(exc))
            report.errors = {r.path: f"send failed: {exc!r}" for r in rows}
        outcomes = [(r.id, report.errors.get(r.path)) for r in rows]
        d = self.settings.delivery
        self.store.record_delivery_attempts(
            outcomes, max_attempts=d.max_attempts, retry_delay_s=d.delay_before_attempt_s)
        sent = sum(1 for _, e in outcomes if e is None)
        series = rows[0].series_uid
        if sent == len(rows):
            LOG.info("job %s series %s: %d file(s) delivered to %s", job_id, series, sent, dest_text)
        else:
            LOG.warning("job %s series %s: %d of %d file(s) not delivered to %s: %s", job_id,
                        series, len(rows) - sent, len(rows), dest_text,
                        next(e for _, e in outcomes if e))
