"""Crash recovery: a Node in a child process killed with SIGKILL, then restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
from pynetdicom import AE

from node.store import JOB_DONE, JOB_RUNNING, StateStore
from node_testkit import make_series
from peers import REPO_ROOT, wait_until

TESTS = Path(__file__).resolve().parent


class Child:
    def __init__(self, root: Path, flag: Path) -> None:
        (root / "port").unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{TESTS}"}
        self.log = open(root / "child.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "node_child", str(root), str(flag)],
                                     env=env, stdout=self.log, stderr=self.log)
        self.port = int(wait_until(lambda: (root / "port").exists() and (root / "port").read_text(),
                                   60, what="child node listening"))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def test_kill9_while_receiving_keeps_every_acknowledged_instance(tmp_path, ct64_dicom_dir):
    root, flag = tmp_path / "root", tmp_path / "flag"
    flag.touch()
    child = Child(root, flag)
    datasets = [pydicom.dcmread(p) for p in sorted(ct64_dicom_dir.iterdir())]
    acked: list[str] = []
    killer = threading.Thread(target=lambda: (
        wait_until(lambda: len(acked) >= 20, 60, what="20 acknowledged"), child.kill9()))
    killer.start()
    ae = AE(ae_title="PYSCU")
    ae.dimse_timeout = ae.network_timeout = 3  # the peer dies: do not wait 30 s to notice
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", child.port, ae_title="LUNGNODE")
    for ds in datasets:
        if not assoc.is_established:
            break
        rsp = assoc.send_c_store(ds)
        if "Status" in rsp and rsp.Status == 0:
            acked.append(str(ds.SOPInstanceUID))
    killer.join()
    assert 20 <= len(acked) < len(datasets)
    child = Child(root, flag)  # restart: reconciliation
    try:
        store = StateStore(root / "lungnode.sqlite3")
        for uid in acked:
            rec = store.instance(uid)
            assert rec is not None, f"acknowledged instance {uid} lost"
            assert pydicom.dcmread(rec.path).SOPInstanceUID == uid
        assert not list((root / "incoming").iterdir())
    finally:
        child.stop()


def test_kill9_while_analysing_completes_exactly_once(tmp_path):
    root, flag = tmp_path / "root", tmp_path / "flag"
    child = Child(root, flag)
    files = make_series(tmp_path / "s", 4)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    from peers import storescu
    assert storescu(files, child.port).returncode == 0
    store = StateStore(root / "lungnode.sqlite3")
    wait_until(lambda: [j for j in store.jobs_for_series(uid) if j.state == JOB_RUNNING], 30,
               what="job running")
    child.kill9()
    flag.touch()
    child = Child(root, flag)
    try:
        jobs = wait_until(lambda: (js := store.jobs_for_series(uid)) and js[0].state == JOB_DONE
                          and js, 30, what="job done")
        assert len(jobs) == 1 and jobs[0].attempts == 2
        assert [r.revision for r in store.results_for_series(uid)] == [1]
        assert (root / "completed.log").read_text().split() == ["1"]
        outbox = root / "outbox" / uid
        assert [p.name for p in outbox.iterdir()] == ["1"]
        assert pydicom.dcmread(outbox / "1" / "sc.dcm")
    finally:
        child.stop()


def test_a_job_that_kills_the_process_twice_is_failed_with_the_reason(tmp_path):
    """kill -9 during analysis, twice: the third start fails the job (no re-queue on every
    restart), the series too, and ``lungnode status`` says why."""
    root, flag = tmp_path / "root", tmp_path / "flag"  # no flag: the analysis never finishes
    child = Child(root, flag)
    files = make_series(tmp_path / "s", 4)
    uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    from peers import storescu
    assert storescu(files, child.port).returncode == 0
    store = StateStore(root / "lungnode.sqlite3")
    for attempt in (1, 2):
        wait_until(lambda n=attempt: [j for j in store.jobs_for_series(uid)
                                      if j.state == JOB_RUNNING and j.attempts == n], 60,
                   what=f"job running, attempt {attempt}")
        child.kill9()
        child = Child(root, flag)
    try:
        (job,) = wait_until(lambda: (js := store.jobs_for_series(uid)) and js[0].state == "failed"
                            and js, 30, what="job failed after two crashes")
        assert job.crashes == 2 and job.attempts == 2
        assert "stopped 2 times while analysing" in job.reason
        assert store.series(uid).state == "failed"
        assert not (root / "completed.log").exists()
        status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--storage",
                                 str(root)], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0 and "stopped 2 times while analysing" in status.stdout
    finally:
        child.stop()
        store.close()
