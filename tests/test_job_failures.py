"""A failure to write an output (SEG/SR encoding error) is a failed job with the reason,
never a retry loop: the real node (``lungnode run``) and a CT whose header highdicom refuses
(PatientSex 'Q', not one of M/F/O: an imperfect header as real exports have)."""

from __future__ import annotations

import subprocess
import sys
import time

import pydicom

from node.phantom import write_phantom
from node.store import DB_FILENAME, StateStore
from node_process import NodeProcess
from peers import REPO_ROOT, storescu, wait_until


def test_output_encoding_error_fails_the_job_once_with_the_reason(tmp_path, storescp):
    folder = tmp_path / "ct"
    write_phantom(folder, seed=2, slices=40, size=128)
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientSex = "Q"
        ds.save_as(path, enforce_file_format=True)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node = NodeProcess(tmp_path / "node", destinations=[(storescp.aet, storescp.port)],
                       quiet_period_s=1.5, overrides={
                           "analysis": {"engine": "threshold"},
                           "selection": {"max_slice_thickness_mm": 8}}).start()
    try:
        assert storescu(files, node.port).returncode == 0
        store = StateStore(node.storage / DB_FILENAME)
        (job,) = wait_until(lambda: (js := store.jobs_for_series(uid)) and js[0].state == "failed"
                            and js, 240, 0.2, "job failed")
        # a retry loop would queue another job: none for 3 s (several poller ticks)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert [j.id for j in store.jobs_for_series(uid)] == [job.id]
            assert store.job(job.id).state == "failed"
            time.sleep(0.05)
        assert job.attempts == 1 and job.reason.startswith("cannot write outputs:")
        assert "DICOM-SEG" in job.reason and "PatientSex" in job.reason
        assert store.series(uid).state == "failed" and store.deliveries() == []
        assert node.proc.poll() is None
        store.close()
        status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--storage",
                                 str(node.storage)], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=120)
        assert "cannot write outputs" in status.stdout
    finally:
        node.stop()
    assert f"series {uid}: job {job.id} revision 1: failed: cannot encode" in node.log_text()
    assert storescp.files() == []
