"""The patient's course: quant.course (ordering, changes, trends, summary), the state store's
patient_scans, and the analysis writing the comparison into the SR and measurements.json."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest

from dicom_validation import dciodvfy_errors
from node.analysis import analyze_series
from node.config import load_settings
from node.course import acquisition_time
from node.phantom import write_phantom
from node.store import PatientScan, StateStore
from quant.course import ABSORPTION, PROGRESSION, STABLE, CourseScan, build_course, classify_change
from test_course_end_to_end import comparison_group, group_numbers, group_references

T0 = datetime(2020, 4, 1, 9, 30, tzinfo=timezone.utc)


def _scan(study: str, day: float, lesion: float, ggo: float, cons: float, **extra) -> CourseScan:
    values = {"lung_volume_ml": 5000.0, "lesion_volume_ml": lesion, "ggo_volume_ml": ggo,
              "consolidation_volume_ml": cons, "lesion_pct": lesion / 50.0, "ggo_pct": ggo / 50.0,
              "consolidation_pct": cons / 50.0, "ct_score": extra.pop("score", None),
              "involved_lobes": None}
    return CourseScan(study_uid=study, series_uid=study + ".1", acquired_at=T0 + timedelta(days=day),
                      values=values, **extra)


def test_course_is_ordered_by_acquisition_not_arrival():
    first = _scan("1.1", 0, 100, 80, 20)
    third = _scan("1.3", 14, 60, 30, 30)
    # the scan of day 7 arrives last (a late prior): it sits between the other two
    late = _scan("1.2", 7, 200, 150, 50)
    course = build_course(late, [third, first])
    assert [s.study_uid for s in course.scans] == ["1.1", "1.2", "1.3"]
    assert course.current_index == 1 and course.prior.study_uid == "1.1"
    point = course.since_prior("lesion_volume_ml")
    assert (point.value, point.change, point.relative_change_pct, point.days_since_prior) == (
        200, 100, pytest.approx(100.0), pytest.approx(7.0))
    later = course.measure("lesion_volume_ml").points[2]
    assert later.change == -140 and later.days_since_prior == pytest.approx(7.0)
    assert course.trend == PROGRESSION and "progression" in course.summary
    # the earliest scan arriving last has no prior
    early = build_course(_scan("1.0", -3, 10, 10, 0), [first, late, third])
    assert early.current_index == 0 and early.prior is None
    assert "Earliest of 4" in early.summary


def test_a_resent_study_replaces_its_earlier_analysis():
    old = _scan("1.1", 0, 100, 80, 20)
    resent = _scan("1.1", 0, 110, 85, 25)
    course = build_course(_scan("1.2", 10, 50, 40, 10), [old, resent])
    assert len(course.scans) == 2
    assert course.since_prior("lesion_volume_ml").change == -60
    # re-analysing the current study itself never compares it with itself
    again = build_course(_scan("1.2", 10, 52, 41, 11), [old, _scan("1.2", 10, 50, 40, 10)])
    assert len(again.scans) == 2 and again.prior.study_uid == "1.1"


def test_trends_and_ggo_consolidation_moving_differently():
    assert classify_change(100, 104) == STABLE            # within 10%
    assert classify_change(10, 14) == STABLE              # within 5 ml
    assert classify_change(100, 120) == PROGRESSION
    assert classify_change(100, 80) == ABSORPTION
    assert classify_change(None, 80) is None
    course = build_course(_scan("2.2", 9, 150, 60, 90, score=9), [_scan("2.1", 0, 150, 120, 30, score=8)])
    assert (course.trend, course.ggo_trend, course.consolidation_trend) == (STABLE, ABSORPTION, PROGRESSION)
    assert "moving differently" in course.summary and "CT score 8 -> 9" in course.summary
    zero = build_course(_scan("3.2", 5, 20, 20, 0), [_scan("3.1", 0, 0, 0, 0)])
    assert zero.since_prior("lesion_volume_ml").relative_change_pct is None
    assert zero.to_json_dict()["measures"]["lesion_volume_ml"]["points"][1]["change"] == 20


def test_acquisition_time_is_utc_with_the_header_offset():
    ds = pydicom.Dataset()
    ds.StudyDate, ds.StudyTime = "20200401", "120000"
    assert acquisition_time(ds) == datetime(2020, 4, 1, 12, tzinfo=timezone.utc)
    ds.AcquisitionDate, ds.AcquisitionTime = "20200402", "083000.5"
    ds.TimezoneOffsetFromUTC = "+0900"
    assert acquisition_time(ds) == datetime(2020, 4, 1, 23, 30, 0, 500000, tzinfo=timezone.utc)
    ds.AcquisitionDateTime = "20200403101500-0500"
    assert acquisition_time(ds) == datetime(2020, 4, 3, 15, 15, tzinfo=timezone.utc)


def test_store_keeps_scans_by_patient_and_issuer(tmp_path: Path):
    store = StateStore(tmp_path / "db.sqlite3")
    def rec(series, revision, pid, issuer, at):
        return PatientScan(series, revision, "st" + series, pid, issuer, at, "{}", None, None, at)
    store.record_patient_scan(rec("1", 1, "P1", "A", 10.0))
    store.record_patient_scan(rec("1", 2, "P1", "A", 11.0))   # a re-analysis of series 1
    store.record_patient_scan(rec("2", 1, "P1", "B", 12.0))   # same ID, another issuer
    store.record_patient_scan(rec("3", 1, "P1", "A", 5.0))
    scans = store.patient_scans("P1", "A")
    assert [(s.series_uid, s.revision) for s in scans] == [("3", 1), ("1", 2)]
    assert [s.series_uid for s in store.all_patient_scans()] == ["3", "1", "2"]
    store.close()
    # the table survives a reopen (idempotent migration)
    assert len(StateStore(tmp_path / "db.sqlite3").patient_scans("P1", "A")) == 2


def test_analysis_with_a_prior_writes_the_comparison(tmp_path: Path):
    """Two small phantom studies of one patient through analyze_series with a real store."""
    settings = load_settings(None, {"analysis": {"engine": "threshold"}})
    store = StateStore(tmp_path / "db.sqlite3")
    outputs = []
    for index, (date, scale) in enumerate((("20200401", 1.0), ("20200411", 1.4))):
        src = tmp_path / f"src{index}"
        write_phantom(src, seed=2, slices=48, size=128, lesion_scale=scale,
                      patient_id="P-7", study_date=date)
        out = analyze_series(sorted(src.glob("*.dcm")), tmp_path / f"out{index}", settings,
                             earlier_scans=store.patient_scans)
        assert out.patient_scan is not None and out.patient_scan.patient_id == "P-7"
        store.record_patient_scan(out.patient_scan)
        outputs.append(out)
    first = json.loads(outputs[0].measurements_json.read_text())
    second = json.loads(outputs[1].measurements_json.read_text())
    assert second["course"]["days_since_prior"] == pytest.approx(10.0)
    assert second["course"]["trend"] == "progression"
    sr_path = outputs[1].measurements_json.parent / "sr.dcm"
    assert dciodvfy_errors(sr_path) == []
    sr = pydicom.dcmread(sr_path)
    numbers = group_numbers(comparison_group(sr, "Change since prior: whole lung"))
    assert numbers[("Lesion volume (GGO and consolidation)", "Value at prior scan")] == pytest.approx(
        first["lesion_volume_ml"])
    assert numbers[("Days since prior scan", None)] == pytest.approx(10.0)
    refs = group_references(comparison_group(sr, "Change since prior: whole lung"))
    assert refs["Prior report"] == first["sr_sop_instance_uid"]
    assert refs["Prior segmentation"] == first["seg_sop_instance_uid"]
    assert "PatientName" not in json.dumps(second) and "Phantom" not in json.dumps(second)
    store.close()


def test_cohort_export_with_clinical_days_from_onset(tmp_path: Path):
    import csv
    import subprocess
    import sys

    from peers import REPO_ROOT

    storage = tmp_path / "var"
    store = StateStore(storage / "lungnode.sqlite3")
    day = 86400.0
    t0 = datetime(2020, 4, 1, 23, 0, tzinfo=timezone.utc).timestamp()
    for n, (pid, series, offset, lesion) in enumerate(
            (("P1", "a", 0, 2.0), ("P1", "b", 7, 4.5), ("P2", "c", 3, 1.0), ("P1", "b", 7, 5.0))):
        doc = json.dumps({"ct_score": 3, "lesion_pct": lesion, "ggo_pct": 1.0,
                          "consolidation_pct": 0.5, "lung_volume_ml": 5000.0})
        store.record_patient_scan(PatientScan(series, 1 + n // 3, "st-" + series, pid, "", t0 + offset * day,
                                              doc, None, None, t0 + n))
    store.close()
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("patient_id,onset_date,group\nP1,2020-03-28,severe\n")
    out = tmp_path / "cohort.csv"
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "cohort", "export", "--storage", str(storage),
         "--out", str(out), "--clinical", str(clinical)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 patient(s) not in" in done.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["patient_id"], r["study_date"], r["days_since_first_scan"], r["group"],
             r["days_from_onset"]) for r in rows] == [
        ("P1", "2020-04-01", "0.0", "severe", "4"), ("P1", "2020-04-08", "7.0", "severe", "11"),
        ("P2", "2020-04-04", "0.0", "", "")]
    assert rows[1]["lesion_pct"] == "5.0"     # the re-analysis of series b stands
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,group\nP1,severe\n")
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "cohort", "export", "--storage", str(storage),
         "--out", str(out), "--clinical", str(bad)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "onset_date" in done.stderr


def test_a_store_of_the_previous_schema_gets_patient_scans(tmp_path: Path):
    import sqlite3

    from node.store import MIGRATIONS

    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    for step in MIGRATIONS[:2]:             # a store written by the node before issue 9
        step(conn.cursor())
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    store = StateStore(db)
    store.record_patient_scan(PatientScan("s", 1, "st", "P", "", 1.0, "{}", None, None, 1.0))
    assert [s.series_uid for s in store.patient_scans("P", "")] == ["s"]
    assert store.schema_version == 3
    store.close()
