"""The SCP against real peers (dcmtk storescu/echoscu and a pynetdicom SCU) on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from node.receiver import (
    STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, Receiver, StoreContext,
)
from node.spool import Spool
from node.store import StateStore
from node_testkit import make_series, make_settings
from peers import CT64_INSTANCE_COUNT, echoscu, storescu

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def receiver_factory(tmp_path):
    running = []

    def make(root=None, **sections):
        root = Path(root or tmp_path / f"root{len(running)}")
        settings = make_settings(root, **sections)
        store = StateStore(root / "db.sqlite3")
        spool = Spool(root, settings.storage.min_free_mb)
        rx = Receiver(settings, StoreContext(spool, store))
        rx.start()
        running.append(rx)
        return rx

    yield make
    for rx in running:
        rx.stop()


def _scu_send(port, datasets, *, abort_after=None, aec="LUNGNODE", contexts=(CT,)):
    ae = AE(ae_title="PYSCU")
    for c in contexts:
        ae.add_requested_context(c)
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established
    statuses = []
    for i, ds in enumerate(datasets):
        if abort_after is not None and i == abort_after:
            assoc.abort()
            return statuses
        statuses.append(int(assoc.send_c_store(ds).Status))
    assoc.release()
    return statuses


def test_echo(receiver_factory):
    rx = receiver_factory()
    assert echoscu(rx.port, "LUNGNODE").returncode == 0


def test_store_series_rows_and_files(receiver_factory, ct64_dicom_dir):
    rx = receiver_factory()
    result = storescu(ct64_dicom_dir, rx.port)
    assert result.returncode == 0, result.stderr
    paths = rx.ctx.store.known_instance_paths()
    assert len(paths) == CT64_INSTANCE_COUNT
    for p in paths:
        ds = pydicom.dcmread(p)  # a proper Part 10 file, pixel data intact
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert Path(p).name == f"{ds.SOPInstanceUID}.dcm"
    assert not list(rx.ctx.spool.incoming_dir.iterdir())


def test_wrong_calling_ae_rejected(receiver_factory, tmp_path):
    rx = receiver_factory(network={"allowed_calling_ae_titles": ["PACS"]})
    files = make_series(tmp_path / "s", 1)
    assert storescu(files, rx.port, aet="INTRUDER").returncode != 0
    assert storescu(files, rx.port, aet="PACS").returncode == 0
    assert len(rx.ctx.store.known_instance_paths()) == 1


def test_wrong_called_ae_rejected(receiver_factory, tmp_path):
    rx = receiver_factory()
    result = storescu(make_series(tmp_path / "s", 1), rx.port, aec="SOMEONE")
    assert result.returncode != 0
    assert not rx.ctx.store.known_instance_paths()


def test_unknown_sop_class_refused(receiver_factory):
    rx = receiver_factory()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    ae.add_requested_context("1.2.3.4.5.6.7")  # made up
    ae.add_requested_context(CT)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="LUNGNODE")
    assert assoc.is_established
    accepted = {c.abstract_syntax for c in assoc.accepted_contexts}
    rejected = {c.abstract_syntax for c in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {CT}
    assert {"1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6.7"} <= rejected


def test_bad_uid_quarantined_with_failure_status(receiver_factory, tmp_path):
    rx = receiver_factory()
    ds = pydicom.dcmread(make_series(tmp_path / "s", 1)[0])
    ds.SeriesInstanceUID = "1.2.3/../../../etc"
    assert _scu_send(rx.port, [ds]) == [STATUS_CANNOT_UNDERSTAND]
    reasons = list(rx.ctx.spool.quarantine_dir.glob("*.reason.txt"))
    assert len(reasons) == 1 and "SeriesInstanceUID" in reasons[0].read_text()
    kept = reasons[0].with_name(reasons[0].name.replace(".reason.txt", ".dcm"))
    assert pydicom.dcmread(kept).SOPInstanceUID == ds.SOPInstanceUID  # bytes kept, not lost
    assert not rx.ctx.store.known_instance_paths()


def test_non_dicom_dataset_refused_and_quarantined(receiver_factory, tmp_path):
    rx = receiver_factory()
    ds = pydicom.dcmread(make_series(tmp_path / "s", 1)[0])
    ds.SOPInstanceUID = "1.2.3.4.5"  # dataset differs from the request? no: garbage UID below
    ds.StudyInstanceUID = "not a uid"
    assert _scu_send(rx.port, [ds]) == [STATUS_CANNOT_UNDERSTAND]
    assert len(list(rx.ctx.spool.quarantine_dir.glob("*.dcm"))) == 1


def test_duplicate_instance_idempotent_and_changed_copy_replaces(receiver_factory, tmp_path):
    rx = receiver_factory()
    files = make_series(tmp_path / "s", 2)
    assert storescu(files, rx.port).returncode == 0
    assert storescu(files, rx.port).returncode == 0
    assert len(rx.ctx.store.known_instance_paths()) == 2
    ds = pydicom.dcmread(files[0])
    ds.InstanceNumber = 99
    assert _scu_send(rx.port, [ds]) == [STATUS_SUCCESS]
    rec = rx.ctx.store.instance(ds.SOPInstanceUID)
    assert pydicom.dcmread(rec.path).InstanceNumber == 99
    assert rx.ctx.store.series(ds.SeriesInstanceUID).instance_count == 2


def test_min_free_space_refuses_with_out_of_resources(receiver_factory, tmp_path):
    rx = receiver_factory(storage={"min_free_mb": 10**9})
    ds = pydicom.dcmread(make_series(tmp_path / "s", 1)[0])
    assert _scu_send(rx.port, [ds]) == [STATUS_OUT_OF_RESOURCES]
    assert not rx.ctx.store.known_instance_paths()
    assert not list(rx.ctx.spool.spool_dir.rglob("*.dcm"))


def test_real_enospc_refuses_and_leaves_nothing_corrupt(receiver_factory, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        rx = receiver_factory(root=mnt / "root")
        big = make_series(tmp_path / "s", 1)[0]
        ds = pydicom.dcmread(big)
        ds.PixelData = os.urandom(2 * 1024 * 1024)
        ds.Rows = ds.Columns = 1024
        small = pydicom.dcmread(make_series(tmp_path / "t", 1)[0])
        assert _scu_send(rx.port, [ds, small]) == [STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS]
        paths = rx.ctx.store.known_instance_paths()
        assert len(paths) == 1
        pydicom.dcmread(next(iter(paths)))
        assert not list(rx.ctx.spool.incoming_dir.iterdir())
        rx.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_abort_mid_series_keeps_what_was_acknowledged(receiver_factory, tmp_path):
    rx = receiver_factory()
    datasets = [pydicom.dcmread(p) for p in make_series(tmp_path / "s", 6)]
    statuses = _scu_send(rx.port, datasets, abort_after=4)
    assert statuses == [STATUS_SUCCESS] * 4
    stored = {Path(p).stem for p in rx.ctx.store.known_instance_paths()}
    assert {ds.SOPInstanceUID for ds in datasets[:4]} <= stored
    for p in rx.ctx.store.known_instance_paths():
        pydicom.dcmread(p)
