"""One clock: the real node (``lungnode run`` in a child process) under three time zones.

The node's host time zone must change nothing: a series closes ``quiet_period_s`` after its
last instance (measured from the state store's UTC timestamps, and from the test's side),
and log lines carry UTC timestamps. Before the fix, America/New_York never closed a series
and Asia/Tokyo closed it 9 hours late (naive local time into a UTC scheduler)."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pydicom
import pytest

from node.store import DB_FILENAME, SERIES_OPEN, StateStore
from node_process import NodeProcess
from node_testkit import make_series
from peers import storescu, wait_until

QUIET_S = 2.0
SLACK_S = 2.5  # poller tick, header reading and a loaded 2-core machine


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_series_closes_after_the_quiet_period_in_any_time_zone(tmp_path, tz):
    files = make_series(tmp_path / "series", 4)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    with NodeProcess(tmp_path / "node", quiet_period_s=QUIET_S, env={"TZ": tz}) as node:
        assert storescu(files, node.port).returncode == 0
        sent_at = time.time()
        store = StateStore(node.storage / DB_FILENAME)
        try:
            series = wait_until(
                lambda: (s := store.series(uid)) is not None and s.state != SERIES_OPEN and s,
                QUIET_S + 20, what=f"series closed under TZ={tz}")
            seen_closed_at = time.time()
        finally:
            store.close()
        log = node.log_text()
    close_after_last_s = series.closed_at - series.last_instance_at
    print(f"\n[clock] TZ={tz}: closed {close_after_last_s:.2f} s after its last instance "
          f"(quiet period {QUIET_S:g} s; test saw it {seen_closed_at - sent_at:.2f} s after "
          "storescu returned)")
    assert QUIET_S <= close_after_last_s < QUIET_S + SLACK_S
    assert series.state == "skipped"  # 4 slices < selection.min_slices: closed and decided
    assert f"series {uid}: receiving" in log and f"series {uid}: closed" in log
    # log timestamps are UTC whatever TZ says
    stamps = re.findall(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.\d{3}Z ", log, re.M)
    assert stamps, log[-2000:]
    last = datetime.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    assert abs(last.timestamp() - time.time()) < 120
