"""node/phantom.py: the synthetic series is valid DICOM and its truth.json is complete."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from node.phantom import phantom_volume, write_phantom

TRUTH_KEYS = {"lung_volume_ml", "ggo_volume_ml", "consolidation_volume_ml", "lesion_volume_ml",
              "left_lung_volume_ml", "right_lung_volume_ml", "seed", "spacing_mm"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    truth = write_phantom(out, seed=3, slices=40, size=128)
    return out, truth


def test_files_and_truth(written):
    out, truth = written
    files = sorted(out.glob("CT_*.dcm"))
    assert len(files) == 40 and files[0].name == "CT_0001.dcm"
    on_disk = json.loads((out / "truth.json").read_text())
    assert TRUTH_KEYS <= set(on_disk)
    assert on_disk["lung_volume_ml"] == pytest.approx(truth["lung_volume_ml"])
    assert on_disk["left_lung_volume_ml"] + on_disk["right_lung_volume_ml"] == pytest.approx(
        on_disk["lung_volume_ml"])


def test_pixels_round_trip(written):
    pydicom = pytest.importorskip("pydicom")
    out, _ = written
    volume, _ = phantom_volume(seed=3, slices=40, size=128)
    ds = pydicom.dcmread(out / "CT_0011.dcm")
    assert ds.Modality == "CT" and list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(hu, volume.hu[10])
    assert float(ds.ImagePositionPatient[2]) > float(pydicom.dcmread(out / "CT_0010.dcm").ImagePositionPatient[2])


def test_deterministic_uids(tmp_path, written):
    pydicom = pytest.importorskip("pydicom")
    out, _ = written
    write_phantom(tmp_path, seed=3, slices=40, size=128)
    a = pydicom.dcmread(out / "CT_0001.dcm")
    b = pydicom.dcmread(tmp_path / "CT_0001.dcm")
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed")
def test_dciodvfy_no_errors(written):
    out, _ = written
    for name in ("CT_0001.dcm", "CT_0040.dcm"):
        run = subprocess.run(["dciodvfy", str(out / name)], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, report
