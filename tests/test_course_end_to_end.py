"""The patient's course end to end (issue 9): three phantom studies of one patient with
growing then shrinking lesions of known volumes and dates go through dcmtk storescu to the
real node (``lungnode run``) and on to Orthanc; each SR in Orthanc carries the comparison
with the prior study, matching the phantoms' truth and dates.

The middle study is sent last (a late prior): the course follows acquisition dates, and the
report of the study acquired after it is re-issued (revision 2, amending the first SR) so
that it compares with the right prior."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pydicom
import pytest

from dicom_validation import dciodvfy_errors
from node.phantom import write_phantom
from node_process import NodeProcess
from node.status_charts import course_chart
from peers import REPO_ROOT, storescu, wait_until

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

pytestmark = pytest.mark.slow

# (study date, lesion scale): admission, one week later (grown), 12 days after that (shrunk)
SCANS = (("20200401", 0.9), ("20200408", 1.3), ("20200420", 0.7))
PATIENT = "COURSE-0001"


def _content_items(item):
    for child in getattr(item, "ContentSequence", []):
        yield child
        yield from _content_items(child)


def _meaning(item, attr="ConceptNameCodeSequence") -> str:
    return str(getattr(item, attr)[0].CodeMeaning)


def comparison_group(sr: pydicom.Dataset, identifier: str):
    """The measurement group whose tracking identifier is ``identifier`` (None if absent)."""
    for item in _content_items(sr):
        if item.ValueType != "CONTAINER" or _meaning(item) != "Measurement Group":
            continue
        for child in item.ContentSequence:
            if child.ValueType == "TEXT" and _meaning(child) == "Tracking Identifier" \
                    and child.TextValue == identifier:
                return item
    return None


def group_numbers(group) -> dict[tuple[str, str | None], float]:
    """(concept meaning, derivation meaning or None) -> value for the group's NUM items."""
    out = {}
    for item in group.ContentSequence:
        if item.ValueType != "NUM":
            continue
        derivation = None
        for child in getattr(item, "ContentSequence", []):
            if child.ValueType == "CODE" and _meaning(child) == "Derivation":
                derivation = _meaning(child, "ConceptCodeSequence")
        out[(_meaning(item), derivation)] = float(item.MeasuredValueSequence[0].NumericValue)
    return out


def group_codes(group) -> dict[str, str]:
    return {_meaning(i): _meaning(i, "ConceptCodeSequence")
            for i in group.ContentSequence if i.ValueType == "CODE"}


def group_references(group) -> dict[str, str]:
    return {_meaning(i): str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in group.ContentSequence if i.ValueType == "COMPOSITE"}


def _srs_in_pacs(orthanc, study_uid: str) -> list[str]:
    found = []
    for series in orthanc.series_of_study(study_uid):
        for instance_id in series["Instances"]:
            tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
            if tags.get("SOPClassUID") == COMPREHENSIVE_3D_SR:
                found.append(instance_id)
    return found


SEND_ORDER = (0, 2, 1)                 # the scan of day 7 arrives last
SRS_EXPECTED = {0: 1, 1: 1, 2: 2}      # study 2's report is re-issued


def _close(measured: float, truth: float, rel: float, abs_ml: float) -> bool:
    return abs(measured - truth) <= max(rel * abs(truth), abs_ml)


@pytest.mark.timeout(1200)  # four (two) phantom analyses on a shared 2-core machine
def test_three_studies_of_one_patient_end_with_the_course_in_the_pacs_sr(orthanc, tmp_path: Path):
    truths = []
    for index, (date, scale) in enumerate(SCANS):
        truths.append(write_phantom(tmp_path / f"study{index}", seed=5, lesion_scale=scale,
                                    patient_id=PATIENT, study_date=date))
    assert len({t["study_instance_uid"] for t in truths}) == 3
    srs: dict[int, pydicom.Dataset] = {}
    first_srs: dict[int, pydicom.Dataset] = {}
    documents: dict[int, dict] = {}
    with NodeProcess(tmp_path / "node", destinations=[(orthanc.aet, orthanc.dicom_port)],
                     overrides={"analysis": {"engine": "threshold", "lung_engine": "classical"}}) as node:
        for step, index in enumerate(SEND_ORDER):
            files = sorted((tmp_path / f"study{index}").glob("*.dcm"))
            assert storescu(files, node.port, aec=node.ae_title).returncode == 0
            # wait for this study's report (and, once the late prior is in, for the re-issue)
            waits = [index] + ([2] if step == len(SEND_ORDER) - 1 else [])
            for study in waits:
                uid = truths[study]["study_instance_uid"]
                count = SRS_EXPECTED[study] if step == len(SEND_ORDER) - 1 else 1
                try:
                    wait_until(lambda uid=uid, count=count: len(_srs_in_pacs(orthanc, uid)) >= count,
                               600, 0.5, f"{count} SR(s) of study {study} in Orthanc")
                except TimeoutError:
                    pytest.fail(f"no SR for study {study}; node log:\n{node.log_tail()}")
        for index, truth in enumerate(truths):
            instances = _srs_in_pacs(orthanc, truth["study_instance_uid"])
            assert len(instances) == SRS_EXPECTED[index]
            for n, instance in enumerate(instances):
                path = tmp_path / f"sr{index}-{n}.dcm"
                path.write_bytes(orthanc.instance_file(instance))
                assert dciodvfy_errors(path) == [], f"dciodvfy errors in SR {index}"
                ds = pydicom.dcmread(path)
                if "PredecessorDocumentsSequence" in ds or len(instances) == 1:
                    srs[index] = ds
                else:
                    first_srs[index] = ds
            outbox = node.storage / "outbox" / truth["series_instance_uid"]
            latest = max((p for p in outbox.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
            documents[index] = json.loads((latest / "measurements.json").read_text())
        # the researcher's export of the same store, joined with the clinical dates
        clinical = tmp_path / "clinical.csv"
        clinical.write_text(f"patient_id,onset_date,group\n{PATIENT},2020-03-27,moderate\n")
        exported = subprocess.run(
            [sys.executable, "-m", "node.cli", "cohort", "export", "--config",
             str(node.config_path), "--out", str(tmp_path / "cohort.csv"), "--clinical",
             str(clinical)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader((tmp_path / "cohort.csv").open()))
    assert [(r["patient_id"], r["study_date"], float(r["days_since_first_scan"]),
             int(r["days_from_onset"]), r["group"]) for r in rows] == [
        (PATIENT, "2020-04-01", 0.0, 5, "moderate"), (PATIENT, "2020-04-08", 7.0, 12, "moderate"),
        (PATIENT, "2020-04-20", 19.0, 24, "moderate")]
    assert [float(r["lesion_pct"]) for r in rows] == pytest.approx(
        [documents[i]["lesion_pct"] for i in range(3)])

    # the re-issued report amends the first one, which compared with the wrong prior
    amended = srs[2].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert amended.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_srs[2].SOPInstanceUID
    first_days = group_numbers(comparison_group(first_srs[2], "Change since prior: whole lung"))
    assert first_days[("Days since prior scan", None)] == pytest.approx(19.0)
    assert documents[2]["revision"] == 2
    # the first scan has no prior: a summary, no comparison group
    assert comparison_group(srs[0], "Change since prior: whole lung") is None
    assert documents[0]["course"]["current_index"] == 0
    assert "no prior" in documents[0]["course"]["summary"]
    days = (7.0, 12.0)
    trends = ("Worsening", "Improving")
    for index in (1, 2):
        sr, prior_truth, truth = srs[index], truths[index - 1], truths[index]
        group = comparison_group(sr, "Change since prior: whole lung")
        assert group is not None, f"SR {index} has no comparison"
        numbers = group_numbers(group)
        assert numbers[("Days since prior scan", None)] == pytest.approx(days[index - 1])
        assert numbers[("Number of scans in course", None)] == 3
        for concept, key in (("Lesion volume (GGO and consolidation)", "lesion_volume_ml"),
                             ("Ground glass opacity volume", "ggo_volume_ml"),
                             ("Consolidation volume", "consolidation_volume_ml")):
            at_prior = numbers[(concept, "Value at prior scan")]
            change = numbers[(concept, "Change since prior scan")]
            relative = numbers[(concept, "Relative change since prior scan")]
            # the SR carries exactly what was measured on each scan...
            assert at_prior == pytest.approx(documents[index - 1][key], rel=1e-6)
            assert at_prior + change == pytest.approx(documents[index][key], rel=1e-6)
            assert relative == pytest.approx(100 * change / at_prior, rel=1e-6)
            # ...and that matches the phantoms' known volumes
            assert _close(at_prior, prior_truth[key], 0.10, 3.0), (index, key, at_prior, prior_truth[key])
            assert _close(change, truth[key] - prior_truth[key], 0.12, 5.0), (
                index, key, change, truth[key] - prior_truth[key])
        assert group_codes(group)["Course of lesions since prior scan"] == trends[index - 1]
        # the reference to the prior study: its SR and SEG, also in Pertinent Other Evidence
        refs = group_references(group)
        prior_sr = srs[index - 1]
        assert refs["Prior report"] == prior_sr.SOPInstanceUID
        prior_seg = documents[index - 1]["seg_sop_instance_uid"]
        assert refs["Prior segmentation"] == prior_seg
        other = {(s.StudyInstanceUID, i.ReferencedSOPInstanceUID)
                 for s in sr.PertinentOtherEvidenceSequence
                 for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert {(prior_truth["study_instance_uid"], prior_sr.SOPInstanceUID),
                (prior_truth["study_instance_uid"], prior_seg)} <= other
        # per lobe: a group for each lobe with the change of its lesion volume
        lobe_groups = [comparison_group(sr, f"Change since prior: {name}") for name in
                       ("Left upper lobe", "Left lower lobe", "Right upper lobe",
                        "Right middle lobe", "Right lower lobe")]
        if documents[index]["lobes"] is not None:
            assert all(g is not None for g in lobe_groups)
        # the plain-language summary
        summary = [i.TextValue for i in _content_items(sr)
                   if i.ValueType == "TEXT" and _meaning(i) == "Course summary"]
        word = "progression" if index == 1 else "absorption"
        assert len(summary) == 1 and word in summary[0], summary
        course = documents[index]["course"]
        assert course["trend"] == word
        assert course["current_index"] == index
        assert [s["study_instance_uid"] for s in course["scans"]] == [
            t["study_instance_uid"] for t in truths]
        points = course["measures"]["lesion_volume_ml"]["points"]
        assert [p["value"] for p in points] == pytest.approx(
            [documents[i]["lesion_volume_ml"] for i in range(3)])
        assert points[index]["days_since_prior"] == pytest.approx(days[index - 1])

    # the trend plot of the course (the status page's chart), kept for the docs
    course = documents[2]["course"]
    png = course_chart(
        [datetime.fromisoformat(s["acquired_at"]) for s in course["scans"]],
        {name: [p["value"] for p in course["measures"][key]["points"]] for name, key in (
            ("lesions", "lesion_volume_ml"), ("GGO", "ggo_volume_ml"),
            ("consolidation", "consolidation_volume_ml"))},
        current=2, title="Phantom patient: measured volumes over three studies")
    (tmp_path / "course_trend.png").write_bytes(png)
    assert png[:4] == b"\x89PNG"
