"""Delivery with the real node (``lungnode run`` in a child process) and real peers.

* a destination down for a while, then up: it gets the results without a restart, and the
  node's log has one line per series state change and no patient name or ID;
* two destinations, one a black hole (accepts TCP, never answers the association): the
  other gets its results at once, not after the black hole's timeout;
* permanent refusals (called AE title not recognised, no presentation context accepted) are
  failed at once with the peer's reason, shown by ``lungnode status``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from node.config import Destination
from node.phantom import write_phantom
from node.sender import DeliveryService, send_files
from node.store import (
    DB_FILENAME, DELIVERY_DONE, DELIVERY_FAILED, DELIVERY_PENDING, FAILURE_PERMANENT,
    DeliveryRequest, InstanceRecord, StateStore,
)
from node_process import NodeProcess
from node_testkit import make_series, make_settings
from peers import REPO_ROOT, _dcmtk_env, free_port, require_binary, storescu, wait_until

PATIENT_NAME = "Zyxwv^Sentinel"
PATIENT_ID = "PID-SENTINEL-4242"
SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _phantom_with_patient(folder: Path) -> tuple[list[Path], str]:
    write_phantom(folder, seed=1, slices=40, size=128)
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(path, enforce_file_format=True)
    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _node(workdir: Path, destinations, **overrides) -> NodeProcess:
    # a 40-slice phantom has 7.5 mm slices: allow them (the selection rules are not tested here)
    return NodeProcess(workdir, destinations=destinations, quiet_period_s=1.5, overrides={
        "analysis": {"engine": "threshold"}, "selection": {"max_slice_thickness_mm": 8},
        **overrides})


def _storescp_on(port: int, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [require_binary("storescp"), "-aet", "STORESCP", "-od", str(out), "+xa", "-pm", str(port)],
        env=_dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL)


def test_destination_down_then_up_gets_results_without_restart(tmp_path):
    files, uid = _phantom_with_patient(tmp_path / "ct")
    port = free_port()
    node = _node(tmp_path / "node", [("STORESCP", port)]).start()
    scp = None
    try:
        pid = node.pid
        assert storescu(files, node.port).returncode == 0
        store = StateStore(node.storage / DB_FILENAME)
        # down: at least two failed attempts (the retry loop keeps going)
        failed_twice = wait_until(
            lambda: (ds := store.deliveries()) and all(d.attempts >= 2 for d in ds) and ds,
            120, 0.2, "two failed delivery attempts while the destination is down")
        assert all(d.state == DELIVERY_PENDING and d.last_error for d in failed_twice)
        down_since = time.time()
        scp = _storescp_on(port, tmp_path / "received")
        wait_until(lambda: all(d.state == DELIVERY_DONE for d in store.deliveries()), 30, 0.2,
                   "deliveries done after the destination came up")
        print(f"\n[delivery] destination up: delivered {time.time() - down_since:.1f} s later "
              f"(retry delays 1..5 s), {failed_twice[0].attempts} failed attempt(s) before")
        received = [p for p in (tmp_path / "received").iterdir() if p.is_file()]
        assert len(received) == 2  # SEG and SR
        assert node.proc.poll() is None and node.pid == pid  # no restart
        wait_until(lambda: f"series {uid}: delivered" in node.log_text(), 10,
                   what="the delivered line")
        store.close()
    finally:
        node.stop()
        if scp is not None:
            scp.terminate()
            scp.wait(30)
    log = node.log_text()
    # one line per series state change, each with the series UID
    for state in ("receiving", "closed", "analysing", "analysed", "delivered"):
        assert re.search(rf"series {re.escape(uid)}: .*{state}", log), f"no '{state}' line"
    assert len(re.findall(rf"series {re.escape(uid)}: closed", log)) == 1
    # no patient names or IDs, in any spelling the libraries might log
    for phi in (PATIENT_NAME, PATIENT_ID, "Zyxwv", "Sentinel", "SENTINEL-4242"):
        assert phi.lower() not in log.lower(), f"{phi!r} in the node's log"
    # third-party loggers at WARNING
    assert not re.search(r" (INFO|DEBUG) (apscheduler|highdicom|pynetdicom|pydicom)", log)


class BlackHole:
    """Accepts TCP connections (kernel backlog) and never answers: a hung PACS."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def test_a_hung_destination_does_not_delay_the_other(tmp_path):
    """One destination hangs (its pass waits 25 s for an answer); the other is down at first:
    its retry falls due while the hung pass runs and is sent then, not after it."""
    files, uid = _phantom_with_patient(tmp_path / "ct")
    hole = BlackHole()
    live_port = free_port()
    node = _node(tmp_path / "node", [("HUNG", hole.port), ("STORESCP", live_port)],
                 network={"acse_timeout_s": 25}).start()
    scp = None
    try:
        assert storescu(files, node.port).returncode == 0
        store = StateStore(node.storage / DB_FILENAME)

        def live():
            return [d for d in store.deliveries() if d.destination.startswith("STORESCP@")]

        job = wait_until(lambda: (js := store.jobs_for_series(uid)) and js[0].state == "done"
                         and js[0], 240, 0.1, "job done")
        wait_until(lambda: (ds := live()) and all(d.attempts >= 1 for d in ds), 20, 0.05,
                   "a failed first attempt to the live destination")
        scp = _storescp_on(live_port, tmp_path / "received")
        wait_until(lambda: [d.state for d in live()] == [DELIVERY_DONE] * 2, 20, 0.05,
                   "live deliveries done")
        delay = time.time() - job.finished_at
        received = [p for p in (tmp_path / "received").iterdir() if p.is_file()]
        hung = [d for d in store.deliveries() if d.destination.startswith("HUNG@")]
        print(f"\n[delivery] live destination (down at first) got both files {delay:.2f} s "
              "after the job was done, while the hung one was still waiting on its 25 s ACSE "
              "timeout")
        assert len(received) == 2 and delay < 20
        assert len(hung) == 2 and all(d.state == DELIVERY_PENDING and d.attempts == 0
                                      for d in hung)  # its first pass has not returned yet
        store.close()
    finally:
        hole.close()  # resets the hung connection, so the node stops without waiting on it
        node.stop()
        if scp is not None:
            scp.terminate()
            scp.wait(30)


# -- permanent refusals (in-process DeliveryService, real pynetdicom peers) ---------------
def _store_with_deliveries(root: Path, files, destination: str) -> StateStore:
    store = StateStore(root / DB_FILENAME)
    store.record_instance(InstanceRecord("1.2.3", "9.9", "8.8", SC, "x", 1, time.time(), "T"))
    job = store.close_series("9.9", quiet_since=time.time() + 1, instance_count=1,
                             selected=True, reason="test")
    assert store.claim_next_job().id == job.id
    store.complete_job(job.id, measurements_json="{}", sr_uids=("1", "2", "3"),
                       outbox_dir=str(root), deliveries=[
                           DeliveryRequest(str(f), SC, str(pydicom.dcmread(f).SOPInstanceUID),
                                           destination) for f in files])
    return store


def _status_text(root: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "node.cli", "status", "--storage", str(root)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("case", ["called_ae_not_recognised", "no_presentation_context"])
def test_permanent_refusal_fails_at_once_with_the_peers_reason(tmp_path, case):
    ae = AE(ae_title="PACS")
    ae.require_called_aet = case == "called_ae_not_recognised"
    ae.add_supported_context(CT if case == "no_presentation_context" else SC)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        called = "WRONGAE" if case == "called_ae_not_recognised" else "PACS"
        dest = f"{called}@127.0.0.1:{port}"
        root = tmp_path / "root"
        settings = make_settings(root, delivery={"max_attempts": 30})
        files = make_series(tmp_path / "out", 2, sop_class=SC, modality="OT")
        store = _store_with_deliveries(root, files, dest)
        service = DeliveryService(store, settings)
        service.start()
        try:
            failed = wait_until(lambda: (ds := store.deliveries()) and all(
                d.state == DELIVERY_FAILED for d in ds) and ds, 20, what="deliveries failed")
        finally:
            service.stop()
        expected = ("Called AE title not recognised" if case == "called_ae_not_recognised"
                    else "accepted no presentation context")
        for d in failed:
            assert d.attempts == 1 and d.failure_kind == FAILURE_PERMANENT
            assert expected in d.last_error
        store.close()
        text = _status_text(root)
        assert expected in text and "permanent" in text
    finally:
        server.shutdown()


def test_transient_rejection_is_retried(tmp_path):
    """A peer at its association limit rejects transiently: kept pending and retried."""
    ae = AE(ae_title="BUSY")
    ae.maximum_associations = 1
    ae.add_supported_context(SC)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        dest = Destination(ae_title="BUSY", host="127.0.0.1", port=port)
        settings = make_settings(tmp_path / "root")
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(SC)
        held = holder.associate("127.0.0.1", port, ae_title="BUSY")
        assert held.is_established
        try:
            report = send_files(make_series(tmp_path / "out", 1, sop_class=SC, modality="OT"),
                                dest, settings)
        finally:
            held.release()
        assert report.association_error and "Rejected Transient" in report.association_error
        assert not report.permanent
    finally:
        server.shutdown()
