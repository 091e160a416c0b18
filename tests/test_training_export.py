"""A site's CT series + DICOM-SEG become a NIfTI training pair that `lungnode train
--site-data` reads (round trip through our own SEG, so the voxel counts are known)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from node.analysis import analyze_series
from node.config import load_settings
from node.phantom import write_phantom
from node.training_export import TrainingExportError, export_training_pair
from segmentation.train import load_site_data


@pytest.fixture(scope="module")
def analysed_phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_phantom(root / "ct", seed=2)
    files = sorted((root / "ct").glob("*.dcm"))
    settings = load_settings(overrides={"analysis": {"engine": "threshold"}})
    result = analyze_series(files, root / "out", settings)
    return files, root / "out" / "seg.dcm", json.loads(result.measurements_json.read_text())


def test_seg_round_trip_gives_the_measured_voxels(analysed_phantom, tmp_path: Path):
    files, seg, measured = analysed_phantom
    pair = export_training_pair(files, seg, tmp_path / "site", "case1")
    image = sitk.ReadImage(str(pair.image_path))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.label_path)))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    assert pair.label_kind == "ggo/consolidation"
    assert label.shape == sitk.GetArrayFromImage(image).shape
    assert np.count_nonzero(label == 1) * voxel_ml == pytest.approx(measured["ggo_volume_ml"], rel=1e-6)
    assert np.count_nonzero(label == 2) * voxel_ml == pytest.approx(
        measured["consolidation_volume_ml"], rel=1e-6
    )
    hosts = load_site_data(tmp_path / "site")
    assert len(hosts) == 1


def test_bad_pairs_are_refused_with_the_reason(analysed_phantom, tmp_path: Path):
    files, seg, _ = analysed_phantom
    with pytest.raises(TrainingExportError, match="no segment"):
        export_training_pair(files, seg, tmp_path, "x", lesion_segments=[42])
    other = tmp_path / "other"
    write_phantom(other, seed=7, slices=40, size=128)
    with pytest.raises(TrainingExportError, match="another study"):
        export_training_pair(sorted(other.glob("*.dcm")), seg, tmp_path, "x")
