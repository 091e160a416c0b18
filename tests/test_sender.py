"""Sending and delivery tracking against real peers: dcmtk storescp and a refusing SCP."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt

from node.config import Destination
from node.sender import DeliveryService, echo, send_files
from node.store import (
    DELIVERY_DONE, DELIVERY_FAILED, DeliveryRequest, InstanceRecord, StateStore,
)
from node_testkit import make_series, make_settings
from peers import _dcmtk_env, free_port, require_binary, wait_until

SC = "1.2.840.10008.5.1.4.1.1.7"


def _store_with_deliveries(root: Path, files, destination: str) -> StateStore:
    """A store holding one finished job whose outputs are ``files`` for ``destination``."""
    store = StateStore(root / "db.sqlite3")
    ds0 = pydicom.dcmread(files[0])
    store.record_instance(InstanceRecord("1.2.3", "9.9", "8.8", SC, "x", 1, time.time(), "T"))
    job = store.close_series("9.9", quiet_since=time.time() + 1, instance_count=1,
                             selected=True, reason="test")
    assert store.claim_next_job().id == job.id
    store.complete_job(job.id, measurements_json="{}", sr_uids=("1", "2", "3"),
                       outbox_dir=str(root), deliveries=[
                           DeliveryRequest(str(f), str(ds0.SOPClassUID),
                                           str(pydicom.dcmread(f).SOPInstanceUID), destination)
                           for f in files])
    return store


@pytest.fixture
def services():
    started = []

    def make(store, settings):
        service = DeliveryService(store, settings)
        service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


def test_send_files_arrive_at_storescp(storescp, tmp_path):
    files = make_series(tmp_path / "s", 3)
    dest = Destination(ae_title=storescp.aet, host="127.0.0.1", port=storescp.port)
    settings = make_settings(tmp_path / "root")
    assert echo(dest, settings) == 0
    report = send_files(files, dest, settings)
    assert report.ok and set(report.statuses.values()) == {0}
    assert len(storescp.wait_for_files(3, timeout_s=20)) == 3


def test_echo_unreachable_is_none(tmp_path):
    dest = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    assert echo(dest, make_settings(tmp_path / "root")) is None


def test_destination_down_then_up_is_retried(tmp_path, services):
    port = free_port()
    dest = f"STORESCP@127.0.0.1:{port}"
    settings = make_settings(tmp_path / "root", destinations=[
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": port}],
        delivery={"max_attempts": 50, "retry_initial_delay_s": 0.2, "retry_max_delay_s": 0.5})
    files = make_series(tmp_path / "out", 2, sop_class=SC, modality="OT")
    store = _store_with_deliveries(tmp_path, files, dest)
    services(store, settings)
    wait_until(lambda: all(d.attempts >= 1 and d.last_error for d in store.deliveries()), 20,
               what="a failed first attempt")
    received = tmp_path / "received"
    received.mkdir()
    proc = subprocess.Popen([require_binary("storescp"), "-aet", "STORESCP", "-od",
                             str(received), "-pm", str(port)], env=_dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: all(d.state == DELIVERY_DONE for d in store.deliveries()), 30,
                   what="deliveries done")
        assert len(list(received.iterdir())) == 2
    finally:
        proc.terminate()
        proc.wait()


def test_refusing_destination_fails_after_max_attempts(tmp_path, services):
    ae = AE(ae_title="REFUSER")
    ae.add_supported_context(SC)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda e: 0xA700)])
    try:
        port = server.server_address[1]
        settings = make_settings(tmp_path / "root", destinations=[
            {"ae_title": "REFUSER", "host": "127.0.0.1", "port": port}])
        files = make_series(tmp_path / "out", 2, sop_class=SC, modality="OT")
        store = _store_with_deliveries(tmp_path, files, f"REFUSER@127.0.0.1:{port}")
        services(store, settings)
        done = wait_until(lambda: (ds := store.deliveries()) and all(
            d.state == DELIVERY_FAILED for d in ds) and ds, 20, what="deliveries failed")
        for d in done:
            assert d.attempts == settings.delivery.max_attempts
            assert "0xA700" in d.last_error
            assert Path(d.path).is_file()  # kept
    finally:
        server.shutdown()
