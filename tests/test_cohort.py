"""Cohort statistics (quant.cohort, `lungnode cohort analyze`): the study's published curves
and a generated cohort with known curves."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peers import REPO_ROOT
from quant.cohort import (
    CURVE_COLUMNS,
    CohortError,
    assign_time_points,
    cubic_peak_day,
    fit_cubic,
    validate_cohort,
)

# The study's published cubic for percent of lesions against days from onset
MODERATE = (0.413, -0.0148, 0.000127)
SEVERE = (2.89, -0.0912, 0.000794)


def _from_peak(peak: float, trough: float, height: float) -> tuple[float, float, float]:
    """b1, b2, b3 of the cubic with dy/dx = 3 b3 (x - peak)(x - trough), y(peak) = height."""
    b3 = 1.0
    b1, b2 = 3 * b3 * peak * trough, -1.5 * b3 * (peak + trough)
    scale = height / (b1 * peak + b2 * peak ** 2 + b3 * peak ** 3)
    return b1 * scale, b2 * scale, b3 * scale


# GGO and consolidation curves for the generated cohort (made up, peaks at known days)
KNOWN = {
    ("moderate", "lesion_pct"): MODERATE,
    ("severe", "lesion_pct"): SEVERE,
    ("moderate", "ggo_pct"): _from_peak(16.0, 50.0, 2.5),
    ("severe", "ggo_pct"): _from_peak(20.0, 55.0, 18.0),
    ("moderate", "consolidation_pct"): _from_peak(20.0, 55.0, 1.0),
    ("severe", "consolidation_pct"): _from_peak(25.0, 60.0, 12.0),
}


def _cubic(b, x):
    return b[0] * x + b[1] * x ** 2 + b[2] * x ** 3


def _true_peak(b):
    days = np.linspace(0.5, 40, 40000)
    return float(days[np.argmax(_cubic(b, days))])


def test_published_equations_peak_near_day_18_and_23():
    moderate = cubic_peak_day(*MODERATE)
    severe = cubic_peak_day(*SEVERE)
    assert moderate == pytest.approx(18, abs=1.0)
    assert severe == pytest.approx(23, abs=1.0)
    # the peak is the maximum of the curve, found independently on a dense grid
    assert moderate == pytest.approx(_true_peak(MODERATE), abs=0.01)
    assert severe == pytest.approx(_true_peak(SEVERE), abs=0.01)
    # a curve that only rises has no peak in range
    assert cubic_peak_day(1.0, 0.0, 0.0, (0, 40)) is None
    assert cubic_peak_day(0.413, -0.0148, 0.000127, (0, 10)) is None


def generated_cohort(seed: int = 7, patients_per_group: int = 48) -> pd.DataFrame:
    """Patients with 4-6 scans each from day 2-5 after onset to ~day 35, measures on the
    known curves plus Gaussian noise (sd 12% of the curve's peak); CT score from the percent of lesions plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    # noise: 12% of each curve's peak value
    noise = {key: 0.12 * float(np.max(_cubic(b, np.linspace(0, 35, 200)))) for key, b in KNOWN.items()}
    for group in ("moderate", "severe"):
        for p in range(patients_per_group):
            first = rng.uniform(2, 5)
            offsets = [0.0, rng.uniform(6, 8), rng.uniform(13, 15)]
            offsets += sorted(rng.uniform(16, 33, size=int(rng.integers(1, 4))))
            for offset in offsets:
                day = first + offset
                values = {m: _cubic(KNOWN[(group, m)], day) + rng.normal(0, noise[(group, m)])
                          for m in ("lesion_pct", "ggo_pct", "consolidation_pct")}
                score = np.clip(25 * (1 - np.exp(-max(values["lesion_pct"], 0) / 12))
                                + rng.normal(0, 1.0), 0, 25)
                rows.append({"patient_id": f"{group[0]}{p:03d}", "group": group,
                             "days_from_onset": round(day, 2), "ct_score": round(score),
                             **{k: round(v, 4) for k, v in values.items()}})
    return pd.DataFrame(rows)


def test_fit_cubic_recovers_known_curves_and_peaks():
    frame = generated_cohort()
    for (group, measure), b in KNOWN.items():
        part = frame[frame["group"] == group]
        curve = fit_cubic(part["days_from_onset"], part[measure], group=group, measure=measure)
        x = np.linspace(3, 35, 50)
        scale = np.max(np.abs(_cubic(b, x)))
        assert np.max(np.abs(curve(x) - _cubic(b, x))) < 0.12 * scale, (group, measure, curve)
        assert curve.peak_day == pytest.approx(_true_peak(b), abs=1.5), (group, measure)
        assert 0 < curve.r2 <= 1


def test_cohort_analyze_cli_writes_the_tables_curves_and_plots(tmp_path: Path):
    cohort_csv = tmp_path / "cohort.csv"
    generated_cohort().to_csv(cohort_csv, index=False)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "cohort", "analyze", "--in", str(cohort_csv),
         "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    with (out / "curves.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CURVE_COLUMNS
        curves = {(r["group"], r["measure"]): r for r in reader}
    for (group, measure), b in KNOWN.items():
        row = curves[(group, measure)]
        assert float(row["peak_day"]) == pytest.approx(_true_peak(b), abs=1.5)
        assert float(row["b1"]) == pytest.approx(b[0], rel=0.25)
    assert ("moderate", "ct_score") in curves
    # medians and IQR per group and time point
    points = pd.read_csv(out / "time_points.csv")
    assert set(points["time_point"]) == {"admission", "1 week", "2 weeks"}
    lesion_2w = points[(points["measure"] == "lesion_pct") & (points["time_point"] == "2 weeks")]
    by_group = lesion_2w.set_index("group")
    assert by_group.loc["moderate", "n"] == 48 and by_group.loc["severe", "n"] == 48
    assert by_group.loc["moderate", "q1"] <= by_group.loc["moderate", "median"] <= by_group.loc["moderate", "q3"]
    assert by_group.loc["severe", "median"] > 3 * by_group.loc["moderate", "median"]
    # Mann-Whitney: severe differs from moderate at two weeks
    tests = pd.read_csv(out / "group_comparison.csv")
    row = tests[(tests["measure"] == "lesion_pct") & (tests["time_point"] == "2 weeks")].iloc[0]
    assert row["p_value"] < 1e-6
    # Spearman between CT score and percent of lesions
    rho = pd.read_csv(out / "correlation.csv").set_index("group").loc["all", "spearman_rho"]
    assert rho > 0.8
    fits = pd.read_csv(out / "score_fit.csv").set_index("model")
    assert fits.loc["quadratic", "r2"] >= fits.loc["linear", "r2"]
    report = (out / "report.md").read_text()
    assert "| group" in report and "Mann-Whitney" in report
    for measure in ("lesion_pct", "ggo_pct", "consolidation_pct", "ct_score"):
        png = Path(written[f"curve_{measure}"])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_time_points_pick_the_scan_closest_to_each_week():
    frame = validate_cohort(pd.DataFrame({
        "patient_id": ["a"] * 5 + ["b"], "group": ["g"] * 6,
        "days_from_onset": [3, 8, 10, 17.5, 30, 5], "ct_score": [1] * 6,
        "lesion_pct": [1.0] * 6, "ggo_pct": [1.0] * 6, "consolidation_pct": [0.0] * 6}))
    points = assign_time_points(frame)
    a = points[points["patient_id"] == "a"].set_index("time_point")["days_from_onset"]
    assert a.to_dict() == {"admission": 3, "1 week": 10, "2 weeks": 17.5}
    assert points[points["patient_id"] == "b"]["time_point"].tolist() == ["admission"]


def test_bad_cohort_csv_names_the_column(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,group,days_from_onset,ct_score,lesion_pct,ggo_pct\n1,m,3,2,1,1\n")
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "cohort", "analyze", "--in", str(bad), "--out",
         str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "consolidation_pct" in done.stderr
    with pytest.raises(CohortError, match="days_from_onset is not a number on line 3"):
        validate_cohort(pd.DataFrame({
            "patient_id": ["a", "b"], "group": ["m", "m"], "days_from_onset": ["3", "x"],
            "ct_score": [1, 2], "lesion_pct": [1, 2], "ggo_pct": [1, 1],
            "consolidation_pct": [0, 0]}))
