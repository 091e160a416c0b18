"""One INFO line per association for hospital IT: peer AE title and address, how it ended,
instances stored and refused, series touched. No patient names or IDs (only counts).

``AssociationLog.stored(assoc, series_uid, ok)`` is called by the C-STORE handler; the
line is written on ``EVT_CONN_CLOSE`` (every accepted connection closes exactly once,
whether released, aborted, rejected or timed out).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)


@dataclass
class _Counts:
    stored: int = 0
    refused: int = 0
    series: set[str] = field(default_factory=set)


class AssociationLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, _Counts] = {}

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
        with self._lock:
            counts = self._counts.pop(id(assoc), _Counts())
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
