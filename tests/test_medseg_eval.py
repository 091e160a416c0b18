"""MedSeg evaluation on two real slices from the shared folder (skipped when absent)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from peers import shared_data_dir
from segmentation.medseg import calibrate_to_hu, calibration_points, load_medseg

MEDSEG = shared_data_dir() / "medseg_covid19_100slices_infnet"
pytestmark = pytest.mark.skipif(not MEDSEG.exists(), reason="shared MedSeg slices not available")


@pytest.fixture()
def two_slices(tmp_path):
    """A folder laid out like the shared one with slices 002 (train) and 006 (test)."""
    for sub, ext in (("images", "jpg"), ("lesion_class_mask", "png"), ("infection_mask", "png")):
        (tmp_path / sub).mkdir()
        for sid in ("002", "006"):
            shutil.copy(MEDSEG / sub / f"{sid}.{ext}", tmp_path / sub / f"{sid}.{ext}")
    lines = (MEDSEG / "slices.csv").read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith(("slice_id", "002,", "006,"))]
    (tmp_path / "slices.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_calibration_puts_lung_and_tissue_near_their_hu(two_slices):
    sl = load_medseg(two_slices, "all")[0]  # 002: lung window, normal-looking lung
    dark, soft = calibration_points(sl.gray)
    assert soft > dark
    hu = calibrate_to_hu(sl.gray)
    # orientation: transposed back, so the mask and image agree in shape
    assert hu.shape == sl.labels.shape
    assert -1000 <= np.median(hu[hu < -500]) <= -750  # aerated lung
    assert np.isclose(calibrate_to_hu(np.array([[dark, soft]], np.uint8)), [[-1000, 40]], atol=6).all()


def test_split_selection(two_slices):
    assert [s.slice_id for s in load_medseg(two_slices, "val")] == ["006"]
    assert [s.slice_id for s in load_medseg(two_slices, "train")] == ["002"]


def test_evaluate_writes_pooled_and_per_slice_dice(two_slices, tmp_path_factory):
    from segmentation.evaluate_medseg import main
    from segmentation.unet_engine import DEFAULT_WEIGHTS

    out = tmp_path_factory.mktemp("out") / "m.json"
    engine = "unet" if DEFAULT_WEIGHTS.exists() else "threshold"
    assert main([str(two_slices), "--json", str(out), "--engine", engine]) == 0
    res = json.loads(out.read_text())
    for k in ("lesion_dice", "ggo_dice", "consolidation_dice"):
        assert res[k] is None or 0.0 <= res[k] <= 1.0
    assert res["lesion_dice"] is not None
    assert [r["slice_id"] for r in res["per_slice"]] == ["002", "006"]
    if engine == "unet":
        assert res["lesion_dice"] > 0.3


def test_missing_folder_is_reported(tmp_path):
    from segmentation.evaluate_medseg import main

    assert main([str(tmp_path)]) == 2
