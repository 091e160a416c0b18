"""One INFO line per association for hospital IT: peer AE title and address, how it ended,
instances stored and refused, series touched. No patient names or IDs (only counts).

``AssociationLog.stored(assoc, series_uid, ok)`` is called by the C-STORE handler; the
line is written on ``EVT_CONN_CLOSE`` (every accepted connection closes exactly once,
whether released, aborted, rejected or timed out).

How it ended is known only once the association's own thread has said so, and the peer may
close the connection first: pynetdicom's association thread sends the A-RELEASE-RP and then
marks the association released, while the peer, having the RP, closes the socket, and the
connection's thread reports the close (seen in CI: a released association logged as
"closed"). So ``on_end`` (subscribed to ``EVT_RELEASED``, ``EVT_ABORTED`` and
``EVT_REJECTED``) marks the end, and ``on_close`` waits for that mark up to
``OUTCOME_WAIT_S`` when the association does not yet say how it ended; a connection dropped
without release or abort waits that long once and is logged "closed".
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)
OUTCOME_WAIT_S = 1.0


@dataclass
class _Counts:
    stored: int = 0
    refused: int = 0
    series: set[str] = field(default_factory=set)


class AssociationLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, _Counts] = {}
        # by the association itself, weakly: a late end mark leaves nothing behind
        self._ended: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _end_mark(self, assoc) -> threading.Event:
        with self._lock:
            return self._ended.setdefault(assoc, threading.Event())

    def on_end(self, event) -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_REJECTED: the association knows how it ended."""
        self._end_mark(event.assoc).set()

    def stored(self, assoc, series_uid: str | None, ok: bool) -> None:
        with self._lock:
            counts = self._counts.setdefault(id(assoc), _Counts())
            if ok:
                counts.stored += 1
                if series_uid:
                    counts.series.add(series_uid)
            else:
                counts.refused += 1

    def on_close(self, event) -> None:
        assoc = event.assoc
        ended = self._end_mark(assoc)
        if not (assoc.is_released or assoc.is_rejected or assoc.is_aborted):
            ended.wait(OUTCOME_WAIT_S)
        with self._lock:
            counts = self._counts.pop(id(assoc), _Counts())
            self._ended.pop(assoc, None)
        ae = str(assoc.requestor.ae_title or "").strip() or "(no association)"
        try:
            address = f"{assoc.requestor.address}:{assoc.requestor.port}"
        except ValueError:
            address = "(unknown address)"
        outcome = ("released" if assoc.is_released else "rejected" if assoc.is_rejected
                   else "aborted" if assoc.is_aborted else "closed")
        LOG.info("association from %s at %s %s: %d instance(s) stored, %d refused, "
                 "%d series", ae, address, outcome, counts.stored, counts.refused,
                 len(counts.series))
