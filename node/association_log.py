"""One INFO line per association for hospital IT: peer AE title and address, how it ended,
instances stored and refused, series touched. No patient names or IDs (only counts).

``AssociationLog.stored(assoc, series_uid, ok)`` is called by the C-STORE handler; the
line is written on ``EVT_CONN_CLOSE`` (every accepted connection closes exactly once,
whether released, aborted, rejected or timed out).

How it ended is known only once the association's own thread has said so, and the peer may
close the connection first: pynetdicom's association thread sends the A-RELEASE-RP and then
marks the association released, while the peer, having the RP, closes the socket, and the
connection's thread reports the close (seen in CI: a released association logged as
"closed"). So the line is written by whichever comes last of the close (``on_close``) and
the end (``on_end``, subscribed to ``EVT_RELEASED``, ``EVT_ABORTED`` and ``EVT_REJECTED``);
a connection that closes without either is written ``OUTCOME_WAIT_S`` later as "closed" (by
a timer: no pynetdicom thread is held), and ``flush`` writes what is still waiting when the
receiver stops.
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
        # by the association itself, weakly, so nothing is left behind whatever comes last
        self._ended: weakref.WeakSet = weakref.WeakSet()      # ended, connection still open
        self._pending: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # closed, end unknown

    def stored(self, assoc, series_uid: str | None, ok: bool) -> None:
        with self._lock:
            counts = self._counts.setdefault(id(assoc), _Counts())
            if ok:
                counts.stored += 1
                if series_uid:
                    counts.series.add(series_uid)
            else:
                counts.refused += 1

    def on_end(self, event) -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_REJECTED: the association knows how it ended."""
        assoc = event.assoc
        with self._lock:
            timer = self._pending.pop(assoc, None)
            if timer is None:          # the connection is still open: its close writes the line
                self._ended.add(assoc)
                return
        timer.cancel()
        self._write(assoc)

    def on_close(self, event) -> None:
        """EVT_CONN_CLOSE: write the line now if the association has said how it ended, else
        when it does, or after OUTCOME_WAIT_S (then "closed"). Never blocks the caller."""
        assoc = event.assoc
        with self._lock:
            known = (assoc in self._ended or assoc.is_released or assoc.is_rejected
                     or assoc.is_aborted)
            self._ended.discard(assoc)
            if not known:
                timer = threading.Timer(OUTCOME_WAIT_S, self._late, args=(assoc,))
                timer.daemon = True
                self._pending[assoc] = timer
        if known:
            self._write(assoc)
        else:
            timer.start()

    def flush(self) -> None:
        """Write the lines still waiting for an outcome (the receiver is stopping)."""
        with self._lock:
            waiting = list(self._pending.items())
            self._pending.clear()
        for assoc, timer in waiting:
            timer.cancel()
            self._write(assoc)

    def _late(self, assoc) -> None:
        with self._lock:
            if self._pending.pop(assoc, None) is None:
                return
        self._write(assoc)

    def _write(self, assoc) -> None:
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
