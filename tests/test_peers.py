"""The real-peer fixtures work: Orthanc and dcmtk talk to each other on loopback."""

from __future__ import annotations

import pydicom
import pytest

from peers import CT64_INSTANCE_COUNT, echoscu, free_port, storescu, wait_until

pytestmark = pytest.mark.slow


def test_free_port_and_wait_until():
    port = free_port()
    assert 1024 <= port <= 65535
    calls = []
    assert wait_until(lambda: calls.append(1) or len(calls) >= 3 and "done", 5, 0.001) == "done"
    with pytest.raises(TimeoutError, match="never"):
        wait_until(lambda: False, 0.05, 0.01, what="never")


def test_orthanc_answers_rest_and_echo(orthanc):
    system = orthanc.get("/system")
    assert system["DicomAet"] == "ORTHANC"
    assert system["DicomPort"] == orthanc.dicom_port
    assert orthanc.instances() == []

    ok = echoscu(orthanc.dicom_port, aec="ORTHANC")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_orthanc_checks_called_ae_title(orthanc):
    refused = echoscu(orthanc.dicom_port, aec="NOT-ORTHANC")
    assert refused.returncode != 0


def test_storescu_ct_series_lands_in_orthanc(orthanc, ct64_dicom_dir):
    first = pydicom.dcmread(sorted(ct64_dicom_dir.iterdir())[0], stop_before_pixels=True)

    result = storescu(ct64_dicom_dir, orthanc.dicom_port, aec="ORTHANC")

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(orthanc.instances()) == CT64_INSTANCE_COUNT
    assert len(orthanc.studies()) == 1
    (series,) = orthanc.find_series(first.StudyInstanceUID)
    assert series.series_instance_uid == first.SeriesInstanceUID
    assert series.modality == "CT"
    assert series.sop_class_uid == first.SOPClassUID
    assert series.instance_count == CT64_INSTANCE_COUNT
    stored = orthanc.instance_file(orthanc.instances()[0])
    assert stored[128:132] == b"DICM"


def test_storescp_receives_from_storescu(storescp, tmp_path):
    sent = [_write_ct_slice(tmp_path / "sent" / f"{i}.dcm", i) for i in range(3)]

    result = storescu(sent, storescp.port, aec=storescp.aet)

    assert result.returncode == 0, result.stdout + result.stderr
    received = storescp.wait_for_files(len(sent), timeout_s=30)
    assert len(received) == len(sent)
    sent_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sent}
    got_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in received}
    assert got_uids == sent_uids


def _write_ct_slice(path, index: int):
    """A minimal 8x8 CT Image Storage file (no shared data needed)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID = "TEST^PEERS", "PEERS"
    ds.InstanceNumber = index + 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.full((8, 8), 1000, dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_orthanc_forwards_to_storescp(orthanc, storescp, ct64_dicom_dir):
    """Orthanc as a C-STORE SCU to a declared peer (how a test PACS sends to the node)."""
    assert storescu(ct64_dicom_dir, orthanc.dicom_port, aec="ORTHANC").returncode == 0
    some = orthanc.instances()[:2]

    orthanc.add_modality("peer", storescp.aet, storescp.port)
    orthanc.send_to_modality("peer", some)

    assert len(storescp.wait_for_files(2, timeout_s=30)) == 2
