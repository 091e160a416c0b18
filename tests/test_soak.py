"""A 30-second version of benchmarks/soak.py: two senders, the real ``lungnode run`` killed
with SIGKILL at random points and restarted, delivery to dcmtk storescp; the ledger must
prove every acknowledged instance stored once and every complete series delivered once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peers import REPO_ROOT


@pytest.mark.slow
def test_short_soak_ledger_holds():
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "soak.py"), "--duration-s", "30",
         "--senders", "2", "--series-interval-s", "8", "--kill-min-s", "6",
         "--kill-max-s", "12", "--quiet-period-s", "10", "--drain-s", "180", "--seed", "1"],
        capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    figures = json.loads(proc.stdout[:proc.stdout.rindex("}") + 1])
    assert figures["kills"] >= 1
    assert figures["series_complete"] >= 1
    assert figures["instances_acknowledged"] >= 100
    assert figures["problems"] == 0
    assert (figures["series_delivered_exactly_once"]
            + figures["series_delivered_with_a_resend_of_the_same_uids"]
            == figures["series_complete"])
