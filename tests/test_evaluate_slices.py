"""Issue 6 item 7: `lungnode evaluate slices` against COVID-CT-MD slice/lobe labels."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from node.evaluate_slices import LabelError, read_labels, slice_labels
from node.volume import VolumeError, load_series
from quant.slice_eval import SliceLabel, evaluate, lesion_areas
from segmentation.types import Lobe

CTMD = Path("/work/shared/data/covid_ct_md_samples")
LABELS = CTMD / "labels.csv"


def test_confusion_at_floors_on_known_areas() -> None:
    lesion = np.zeros((4, 20, 20), bool)
    lobes = np.zeros((4, 20, 20), np.uint8)
    lobes[:, :, :10] = Lobe.RIGHT_LOWER
    lobes[:, :, 10:] = Lobe.LEFT_LOWER
    lesion[0, :3, :10] = True     # 30 px = 30 mm^2 in RLL
    lesion[1, :1, 10:15] = True   # 5 mm^2 in LLL
    lesion[3, :6, :10] = True     # 60 mm^2 in RLL, labelled negative
    no = {c: False for c in ("LUL", "LLL", "RUL", "RML", "RLL")}
    labels = [SliceLabel(0, True, {**no, "RLL": True}), SliceLabel(1, True, {**no, "LLL": True}),
              SliceLabel(2, True, {**no, "LUL": True}), SliceLabel(3, False, no)]
    res = evaluate(lesion_areas(lesion, lobes, (2.0, 1.0, 1.0), labels), (0.0, 25.0, 100.0))
    s0, s25, s100 = res[0.0]["slice"], res[25.0]["slice"], res[100.0]["slice"]
    assert (s0.tp, s0.fp, s0.tn, s0.fn) == (2, 1, 0, 1)
    assert (s25.tp, s25.fp, s25.tn, s25.fn) == (1, 1, 0, 2)
    assert (s100.tp, s100.fp, s100.tn, s100.fn) == (0, 0, 1, 3)
    lo = res[25.0]["slice_lobe"]
    assert (lo.tp, lo.fp, lo.fn) == (1, 1, 2) and lo.tn == 20 - 4
    assert s25.sensitivity == pytest.approx(1 / 3) and s25.specificity == 0.0


@pytest.mark.skipif(not LABELS.is_file(), reason="shared/data is not mounted")
def test_labels_map_to_the_canonical_slices_of_the_real_series() -> None:
    files = sorted((CTMD / "P002").glob("*.dcm"))
    with pytest.raises(VolumeError, match="not a valid DICOM UID|missing or empty"):
        load_series(files)   # as the network receiver would: refused
    series = load_series(files, require_valid_uids=False)
    rows = read_labels(LABELS, "P002")
    labels = slice_labels(series, rows, LABELS)
    assert len(labels) == series.n_slices == 133
    assert sum(lab.infected for lab in labels) == 68
    # slice_rank_superior_first 0 is the most cranial slice: the highest canonical z
    by_rank = {int(r["slice_rank_superior_first"]): Path(r["file"]).name for r in rows}
    k_top = [p.name for p in series.paths].index(by_rank[0])
    top = [lab for lab in labels if lab.z == series.n_slices - 1][0]
    assert series.slice_positions_mm[k_top] == max(series.slice_positions_mm)
    assert top.z == series.n_slices - 1
    # upper-lobe labels lie above lower-lobe labels (the labels' own check of the axis)
    upper = [lab.z for lab in labels if lab.lobes["RUL"] or lab.lobes["LUL"]]
    lower = [lab.z for lab in labels if lab.lobes["RLL"] or lab.lobes["LLL"]]
    assert np.mean(upper) > np.mean(lower)
    with pytest.raises(LabelError, match="not a slice of this series"):
        slice_labels(series, read_labels(LABELS, "cap002"), LABELS)


@pytest.mark.skipif(not LABELS.is_file(), reason="shared/data is not mounted")
def test_cli_on_a_real_pneumonia_series(tmp_path: Path) -> None:
    out = tmp_path / "cap002.json"
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "evaluate", "slices", str(CTMD / "cap002"),
         "--labels", str(LABELS), "--subject", "cap002", "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "<- default" in proc.stdout and "cap002: 131 slices, 15 labelled infected" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc["by_floor_mm2"]) == {"0", "10", "25", "50", "100"}
    for res in doc["by_floor_mm2"].values():
        s = res["slice"]
        assert s["tp"] + s["fp"] + s["tn"] + s["fn"] == 131 and s["tp"] + s["fn"] == 15
        lo = res["slice_lobe"]
        assert lo["tp"] + lo["fp"] + lo["tn"] + lo["fn"] == 5 * 131
    # a higher floor never calls more slices positive
    positives = [r["slice"]["tp"] + r["slice"]["fp"] for r in doc["by_floor_mm2"].values()]
    assert positives == sorted(positives, reverse=True)
    # the pneumonia-only mask is a subset of the lesion mask: never more positive slices
    assert set(doc["by_floor_mm2_pneumonia"]) == set(doc["by_floor_mm2"])
    for floor, res in doc["by_floor_mm2_pneumonia"].items():
        s, all_voxels = res["slice"], doc["by_floor_mm2"][floor]["slice"]
        assert s["tp"] + s["fp"] + s["tn"] + s["fn"] == 131
        assert s["tp"] <= all_voxels["tp"] and s["fp"] <= all_voxels["fp"]
    assert "pneumonia components" in proc.stdout


@pytest.mark.skipif(not LABELS.is_file(), reason="shared/data is not mounted")
def test_cli_refuses_labels_of_another_series(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    with open(LABELS, newline="") as src, open(bad, "w", newline="") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["subject"] == "P002")
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "evaluate", "slices", str(CTMD / "normal002"),
         "--labels", str(bad), "--subject", "P002"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 3 and "not a slice of this series" in proc.stderr
