"""C-STORE SCU: sends files to a destination and tracks deliveries with retries.

* ``send_files(paths, destination, settings)`` sends in one association and returns a
  ``SendReport`` with every instance's response status (``lungnode send``).
* ``echo(destination, settings)`` returns the C-ECHO status, or None if unreachable.
* ``DeliveryService`` is a poller (node.poller) over the state store: each tick asks the
  store which destinations have deliveries due and starts one pass per destination, each in
  its own thread, so a dead, slow or refusing destination never delays the others. A pass
  sends every due file for its destination in ONE association. A row is done only on status
  0x0000 or a warning (0xB000, 0xB006, 0xB007: logged). Failures are sorted, never by parsing
  a message:

  - permanent (failed at once, the peer's reason kept for ``lungnode status``): association
    rejected-permanent (e.g. called AE title not recognised), no presentation context
    accepted for the file's SOP class, status 0x0122 / 0x0124 / 0xA9xx, unreadable file;
  - transient (retried with growing delays ``delivery.*``, failed after ``max_attempts``):
    peer down or unreachable, rejected-transient, aborted, timeouts, 0xA7xx and the rest.

  Files are never deleted here. A retry that falls due while passes run is picked up by the
  next tick (the poller is woken when a pass ends), so the retry loop cannot die.

TCP_NODELAY is set on every SCU socket (EVT_CONN_OPEN); without it, small response/request
exchanges wait on delayed ACKs (a 300-image send took 14 s instead of 1.3 s).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pydicom
from pynetdicom import AE, evt

from node import tls
from node.ae import configured_ae
from node.config import Destination, Settings
from node.poller import Poller
from node.store import DeliveryOutcome, DeliveryRecord, JobSummary, StateStore

LOG = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
WARNING_STATUSES = (0xB000, 0xB006, 0xB007)  # coercion, elements discarded, mismatch
# C-STORE failures that a resend of the same file cannot fix (PS3.4 Annex B.2.3)
PERMANENT_STATUSES = (0x0122, 0x0124)  # SOP class not supported, not authorised
PERMANENT_STATUS_MASK = 0xA900  # 0xA9xx: data set does not match SOP class
ASSOCIATION_REJECTED_PERMANENT = 0x01
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
_FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")

MAX_FILES_PER_PASS = 500  # one association sends at most this many; the next tick sends the rest
POLL_MAX_INTERVAL_S = 5.0  # a safety net: passes and new deliveries wake the poller anyway


def is_permanent_status(status: int) -> bool:
    return status in PERMANENT_STATUSES or (status & 0xFF00) == PERMANENT_STATUS_MASK


@dataclass
class SendReport:
    destination: str
    statuses: dict[str, int | None] = field(default_factory=dict)  # path -> status
    errors: dict[str, str] = field(default_factory=dict)  # path -> reason (not delivered)
    permanent: set[str] = field(default_factory=set)  # paths whose error will not go away
    association_error: str | None = None

    @property
    def delivered(self) -> list[str]:
        return [p for p, s in self.statuses.items() if p not in self.errors]

    @property
    def ok(self) -> bool:
        return not self.errors and self.association_error is None

    def fail(self, path: str, reason: str, *, permanent: bool = False) -> None:
        self.statuses.setdefault(path, None)
        self.errors[path] = reason
        if permanent:
            self.permanent.add(path)


@dataclass
class _Negotiation:
    """What the peer answered to the association request (from EVT_ACSE_RECV)."""

    primitive: object | None = None

    def record(self, event) -> None:
        if hasattr(event.primitive, "result") and self.primitive is None:
            self.primitive = event.primitive


def _set_nodelay(event) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _scu_ae(settings: Settings) -> AE:
    ae = configured_ae(settings.network)
    ae.connection_timeout = settings.network.acse_timeout_s
    return ae


def _associate(ae: AE, destination: Destination, negotiation: _Negotiation | None = None):
    """The one place the node opens an association to a peer (TLS plugs in here)."""
    handlers = [(evt.EVT_CONN_OPEN, _set_nodelay)]
    if negotiation is not None:
        handlers.append((evt.EVT_ACSE_RECV, negotiation.record))
    return ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title,
        evt_handlers=handlers, tls_args=tls.client_args(destination),
    )


def association_failure(assoc, destination: Destination, negotiation: _Negotiation) -> tuple[str, bool]:
    """Why an association was not established, and whether that is permanent."""
    rsp = negotiation.primitive
    if assoc.is_rejected and rsp is not None:
        permanent = rsp.result == ASSOCIATION_REJECTED_PERMANENT
        return (f"association rejected by {destination} ({rsp.result_str}, source "
                f"{rsp.source_str}): {rsp.reason_str}", permanent)
    if rsp is not None and getattr(rsp, "result", None) == 0 and not assoc.accepted_contexts:
        refused = "; ".join(
            f"{pydicom.uid.UID(cx.abstract_syntax).name}: {cx.status}"
            for cx in assoc.rejected_contexts
        ) or "no context"
        return (f"{destination} accepted no presentation context ({refused})", True)
    if assoc.is_aborted:
        return f"association with {destination} aborted", False
    return (f"cannot reach {destination} (down, unreachable or no answer within "
            f"{assoc.ae.connection_timeout or assoc.ae.acse_timeout} s)", False)


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
    """Send ``paths`` in one association; every response status is recorded and checked.

    Headers are read first (for the presentation contexts), each file in full only when it
    is sent, so a long batch does not hold every dataset in memory."""
    report = SendReport(str(destination))
    headers: dict[str, tuple[str, str]] = {}  # path -> (SOP class, transfer syntax)
    for p in map(str, paths):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            headers[p] = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        except Exception as exc:
            report.fail(p, f"cannot read: {exc}", permanent=True)
    if not headers:
        return report
    ae = _scu_ae(settings)
    contexts: dict[str, set[str]] = defaultdict(set)
    for sop_class, syntax in headers.values():
        contexts[sop_class].add(syntax)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes) + [
            s for s in _FALLBACK_SYNTAXES if s not in syntaxes])
    negotiation = _Negotiation()
    assoc = _associate(ae, destination, negotiation)
    if not assoc.is_established:
        reason, permanent = association_failure(assoc, destination, negotiation)
        report.association_error = reason
        for p in headers:
            report.fail(p, reason, permanent=permanent)
        return report
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        refused = {str(cx.abstract_syntax): cx.status for cx in assoc.rejected_contexts}
        for p, (sop_class, _) in headers.items():
            if not assoc.is_established:
                report.fail(p, "association lost before sending")
                continue
            if sop_class not in accepted:
                name = pydicom.uid.UID(sop_class).name
                report.fail(p, f"{destination} accepted no presentation context for {name}"
                               f" ({refused.get(sop_class, 'not accepted')})", permanent=True)
                continue
            try:
                ds = pydicom.dcmread(p)
            except Exception as exc:
                report.fail(p, f"cannot read: {exc}", permanent=True)
                continue
            try:
                rsp = assoc.send_c_store(ds)
            except Exception as exc:  # encoding problem, or the association went away
                report.fail(p, f"not sent: {exc}", permanent=assoc.is_established)
                continue
            status = int(rsp.Status) if "Status" in rsp else None
            report.statuses[p] = status
            if status is None:
                report.fail(p, "no response (timeout or association lost)")
            elif status in WARNING_STATUSES:
                LOG.warning("%s accepted %s with warning status 0x%04X", destination,
                            ds.SOPInstanceUID, status)
            elif status != STATUS_SUCCESS:
                report.fail(p, f"refused with status 0x{status:04X}",
                            permanent=is_permanent_status(status))
    finally:
        if assoc.is_established:
            assoc.release()
    return report


class DeliveryService:
    """Sends due deliveries: one poller, one pass (thread, association) per destination."""

    def __init__(self, store: StateStore, settings: Settings, *, max_parallel: int = 8) -> None:
        self.store = store
        self.settings = settings
        self._destinations = {str(d): d for d in settings.destinations}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="deliver")
        self.poller = Poller("deliveries", self._tick, max_interval_s=POLL_MAX_INTERVAL_S)

    def start(self) -> None:
        self.poller.start()

    def kick(self, *_args) -> None:
        """New deliveries were recorded: look now."""
        self.poller.wake()

    def stop(self, timeout_s: float = 30) -> None:
        self.poller.stop(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def busy_destinations(self) -> set[str]:
        with self._lock:
            return set(self._busy)

    def _tick(self) -> float | None:
        now = time.time()
        next_due: float | None = None
        for dest_text, due_at in self.store.delivery_due_by_destination().items():
            with self._lock:
                if dest_text in self._busy:
                    continue  # its pass wakes us when it ends
                if due_at <= now:
                    self._busy.add(dest_text)
                    self._pool.submit(self._pass, dest_text)
                    continue
            next_due = due_at if next_due is None else min(next_due, due_at)
        return None if next_due is None else next_due - now

    def _pass(self, dest_text: str) -> None:
        try:
            self.deliver_to(dest_text)
        except Exception:
            LOG.exception("delivery pass to %s failed (bug); retried next tick", dest_text)
        finally:
            with self._lock:
                self._busy.discard(dest_text)
            self.poller.wake()

    def process_due(self) -> None:
        """Send everything due now, one pass per destination in parallel; return when done."""
        dests = [d for d, due in self.store.delivery_due_by_destination().items()
                 if due <= time.time()]
        list(self._pool.map(self.deliver_to, dests))

    def deliver_to(self, dest_text: str) -> list[JobSummary]:
        """One pass to one destination: every due file in one association."""
        rows = self.store.due_deliveries(destination=dest_text)[:MAX_FILES_PER_PASS]
        if not rows:
            return []
        try:
            dest = self._destinations.get(dest_text) or Destination.parse(dest_text)
            report = send_files(sorted({r.path for r in rows}), dest, self.settings)
        except Exception as exc:
            LOG.exception("sending to %s failed", dest_text)
            report = SendReport(dest_text, association_error=repr(exc))
            for r in rows:
                report.fail(r.path, f"send failed: {exc!r}")
        outcomes = [DeliveryOutcome(r.id, report.errors.get(r.path), r.path in report.permanent)
                    for r in rows]
        d = self.settings.delivery
        summaries = self.store.record_delivery_attempts(
            outcomes, max_attempts=d.max_attempts, retry_delay_s=d.delay_before_attempt_s)
        self._log_pass(dest_text, rows, report)
        for s in summaries:
            if s.pending == 0:
                if s.failed:
                    LOG.warning("series %s: delivery failed (job %s: %d delivered, %d failed; "
                                "see lungnode status)", s.series_uid, s.job_id, s.done, s.failed)
                else:
                    LOG.info("series %s: delivered (job %s: %d file(s) to every destination)",
                             s.series_uid, s.job_id, s.done)
        return summaries

    @staticmethod
    def _log_pass(dest_text: str, rows: Sequence[DeliveryRecord], report: SendReport) -> None:
        by_job: dict[tuple[int, str], list[DeliveryRecord]] = defaultdict(list)
        for r in rows:
            by_job[(r.job_id, r.series_uid)].append(r)
        for (job_id, series), job_rows in by_job.items():
            failed = [r for r in job_rows if r.path in report.errors]
            if not failed:
                LOG.info("job %s series %s: %d file(s) delivered to %s", job_id, series,
                         len(job_rows), dest_text)
                continue
            kind = "permanent" if all(r.path in report.permanent for r in failed) else "will retry"
            LOG.warning("job %s series %s: %d of %d file(s) not delivered to %s (%s): %s",
                        job_id, series, len(failed), len(job_rows), dest_text, kind,
                        report.errors[failed[0].path])
