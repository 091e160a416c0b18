"""A poller: one thread that asks the state store what is due, does it, and sleeps.

The state store is the node's only clock (ARCHITECTURE.md, "One clock"). A ``Poller`` calls
``tick()`` in a loop; ``tick()`` does whatever is due now and returns how many seconds until
something else may be due (None: nothing known), and the poller sleeps for that, never longer
than ``max_interval_s``, or until ``wake()`` is called (new work arrived). An exception in
``tick()`` is logged and the loop goes on: a poller never dies, and a wake-up that comes while
``tick()`` runs is kept (the next sleep returns at once), so nothing due is ever dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

LOG = logging.getLogger(__name__)

Tick = Callable[[], "float | None"]


class Poller:
    def __init__(self, name: str, tick: Tick, *, max_interval_s: float,
                 min_interval_s: float = 0.01) -> None:
        if max_interval_s <= 0:
            raise ValueError("max_interval_s must be > 0")
        self.name = name
        self._tick = tick
        self.max_interval_s = max_interval_s
        self.min_interval_s = min(min_interval_s, max_interval_s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, *_args: object) -> None:
        """Ask for a tick now (callable from any thread, with any arguments)."""
        self._wake.set()

    def stop(self, timeout_s: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # a wake() from now on is kept for the next sleep
            try:
                delay = self._tick()
            except Exception:
                LOG.exception("%s: tick failed; next tick in %.1f s", self.name,
                              self.max_interval_s)
                delay = None
            if delay is None:
                delay = self.max_interval_s
            self._wake.wait(min(max(delay, self.min_interval_s), self.max_interval_s))
