"""The whole path with real peers: dcmtk storescu as the scanner, the node as a child
process (``lungnode run``), Orthanc as the PACS, dciodvfy on every object the PACS got."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_validation import dciodvfy_errors
from node_process import NodeProcess
from peers import REPO_ROOT, storescu, wait_until

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

pytestmark = pytest.mark.slow


def _lungnode(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def _study_uid(folder: Path) -> str:
    first = next(p for p in sorted(folder.rglob("*.dcm")))
    return pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID


def _results_in_pacs(orthanc, study_uid: str):
    classes = {}
    for series in orthanc.series_of_study(study_uid):
        for instance_id in series["Instances"]:
            tags = orthanc.get(f"/instances/{instance_id}/simplified-tags")
            classes.setdefault(tags.get("SOPClassUID"), []).append(instance_id)
    if SEG_SOP_CLASS in classes and COMPREHENSIVE_3D_SR in classes:
        return classes
    return None


def _check_results_in_pacs(orthanc, study_uid: str, tmp_path: Path, node: NodeProcess):
    """Wait for the node's results in the PACS; dciodvfy every SEG and the SR; return the
    (lesions SEG, SR). The node sends the SEGs before the SR in one association, so once
    the SR is there every SEG is too."""
    try:
        classes = wait_until(
            lambda: _results_in_pacs(orthanc, study_uid), 420, 0.5, "SEG and SR in Orthanc"
        )
    except TimeoutError:
        pytest.fail(f"no SEG+SR in the PACS; node log:\n{node.log_tail()}")
    # lesions and lungs always; lobes when the lobes could be drawn
    assert len(classes[SEG_SOP_CLASS]) in (2, 3) and len(classes[COMPREHENSIVE_3D_SR]) == 1
    segs = []
    for n, instance in enumerate(classes[SEG_SOP_CLASS] + classes[COMPREHENSIVE_3D_SR]):
        path = tmp_path / f"result-{n}.dcm"
        path.write_bytes(orthanc.instance_file(instance))
        assert dciodvfy_errors(path) == [], f"dciodvfy errors in {path.name} the PACS got"
        segs.append(pydicom.dcmread(path))
    sr = segs.pop()
    by_description = {str(ds.SeriesDescription): ds for ds in segs}
    seg = by_description["Lesions: GGO and consolidation (lungnode)"]
    assert "Lungs: left and right (lungnode)" in by_description
    assert seg.StudyInstanceUID == study_uid == sr.StudyInstanceUID
    assert all(ds.StudyInstanceUID == study_uid for ds in segs)
    assert len({int(ds.SeriesNumber) for ds in segs}) == len(segs)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Ground glass opacity",
                                                            "Consolidation"]
    return seg, sr


def test_phantom_analyze_matches_truth(tmp_path: Path):
    """`lungnode phantom` then `lungnode analyze`: volumes within 5% of truth.json.

    Run with the classical engines (threshold lesions inside classical lungs, their original
    pairing): the learned lung mask's 2.5 mm outline takes in a thin rim of chest wall that the
    threshold engine counts as consolidation, and the default learned pair is short on GGO (see
    test_phantom_default_engines below). The chain checked here (geometry, HU split, volumes,
    SEG/SR) is the same for every engine."""
    phantom_dir, out_dir = tmp_path / "phantom", tmp_path / "out"
    made = _lungnode("phantom", "--out", str(phantom_dir), "--seed", "3")
    assert made.returncode == 0, made.stderr
    truth = json.loads((phantom_dir / "truth.json").read_text())
    done = _lungnode("analyze", str(phantom_dir), "--out", str(out_dir), "--engine", "threshold",
                     "--lung-engine", "classical")
    assert done.returncode == 0, done.stderr
    measured = json.loads((out_dir / "measurements.json").read_text())
    for key in ("lung_volume_ml", "ggo_volume_ml", "consolidation_volume_ml"):
        error = abs(measured[key] - truth[key]) / truth[key]
        assert error <= 0.05, f"{key}: measured {measured[key]:.1f} vs truth {truth[key]:.1f}"
    required = {
        "lung_volume_ml", "lesion_volume_ml", "ggo_volume_ml", "consolidation_volume_ml",
        "lesion_pct", "ggo_pct", "consolidation_pct", "ct_score", "ct_score_equivalent",
        "involved_lobes", "hellinger_distance", "iou_vs_reference", "lobes", "engine",
        "quality_flags",
    }
    assert required <= measured.keys()
    if measured["ct_score"] is None:
        assert any("lobe" in flag for flag in measured["quality_flags"])
    outputs = ["seg.dcm", "seg_lungs.dcm", "sr.dcm", "report.dcm", "summary.dcm",
               "overlay_0001.dcm"] + (["seg_lobes.dcm"] if (out_dir / "seg_lobes.dcm").exists()
                                      else [])
    for name in outputs:
        assert dciodvfy_errors(out_dir / name) == [], name


def test_analyze_refuses_incomplete_series_with_reason(tmp_path: Path, shared_data: Path):
    """A series with a missing slice: exit code 3 and a message that says so."""
    source = shared_data / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0003_subset"
    files = sorted(source.glob("*.dcm"))
    gapped = tmp_path / "gapped"
    gapped.mkdir()
    for index, path in enumerate(files):
        if index != len(files) // 2:
            (gapped / path.name).write_bytes(path.read_bytes())
    done = _lungnode("analyze", str(gapped), "--out", str(tmp_path / "out"))
    assert done.returncode == 3, done.stderr
    assert "gap" in done.stderr or "missing" in done.stderr
    assert not (tmp_path / "out" / "sr.dcm").exists()


def test_real_chest_ct_scanner_to_node_to_pacs(orthanc, tmp_path: Path, shared_data: Path):
    """LIDC-IDRI-0001 (133 real slices): storescu -> node -> Orthanc; SEG + SR in its study."""
    series_dir = shared_data / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series"
    study_uid = _study_uid(series_dir)
    slices = sorted(series_dir.glob("*.dcm"))  # the folder also holds the LIDC reads (XML)
    # the PACS already holds the CT, as it would when it auto-routes it to the node
    assert storescu(slices, orthanc.dicom_port, aec=orthanc.aet).returncode == 0
    with NodeProcess(tmp_path / "node", destinations=[(orthanc.aet, orthanc.dicom_port)]) as node:
        sent = storescu(slices, node.port, aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        seg, sr = _check_results_in_pacs(orthanc, study_uid, tmp_path, node)
    measurements = next((node.storage / "outbox").rglob("measurements.json"))
    document = json.loads(measurements.read_text())
    assert 2000 < document["lung_volume_ml"] < 9000, document["lung_volume_ml"]
    assert document["series_instance_uid"] == pydicom.dcmread(
        next(series_dir.glob("*.dcm")), stop_before_pixels=True
    ).SeriesInstanceUID


def test_phantom_through_the_network_and_results_routed_back(orthanc, tmp_path: Path):
    """A phantom series goes through the node to Orthanc; when the PACS routes the SEG and
    SR back to the node, they are stored and never analysed."""
    phantom_dir = tmp_path / "phantom"
    assert _lungnode("phantom", "--out", str(phantom_dir), "--seed", "5").returncode == 0
    study_uid = _study_uid(phantom_dir)
    with NodeProcess(tmp_path / "node", destinations=[(orthanc.aet, orthanc.dicom_port)]) as node:
        assert storescu(sorted(phantom_dir.glob("*.dcm")), node.port, aec=node.ae_title).returncode == 0
        seg, sr = _check_results_in_pacs(orthanc, study_uid, tmp_path, node)
        # route the results back to the node, as an auto-routing PACS would
        results = [i for i in orthanc.instances()
                   if orthanc.get(f"/instances/{i}/simplified-tags").get("Modality") in ("SEG", "SR")]
        orthanc.add_modality("lungnode", node.ae_title, node.port)
        orthanc.send_to_modality("lungnode", results)
        routed = {orthanc.get(f"/instances/{i}/simplified-tags")["SeriesInstanceUID"]
                  for i in results}
        skipped = wait_until(
            lambda: _status_with_skipped(node, len(routed)), 60, 0.5,
            "routed-back results recorded as skipped"
        )
        assert seg.SeriesInstanceUID in routed and sr.SeriesInstanceUID in routed
        assert {s["series_uid"] for s in skipped} == routed
        assert all("derived" in s["reason"] for s in skipped), skipped
        jobs = json.loads(_lungnode("status", "--config", str(node.config_path), "--json").stdout)
        assert len(jobs["jobs"]) == 1  # only the CT was analysed
    # still the same SEGs and one SR: nothing was analysed again
    classes = _results_in_pacs(orthanc, study_uid)
    assert len(classes[SEG_SOP_CLASS]) == len(results) - 1
    assert len(classes[COMPREHENSIVE_3D_SR]) == 1


def _status_with_skipped(node: NodeProcess, count: int):
    done = _lungnode("status", "--config", str(node.config_path), "--json", timeout_s=60)
    if done.returncode != 0:
        return None
    report = json.loads(done.stdout)
    skipped = [s for s in report.get("series", []) if s.get("state") == "skipped"]
    return skipped if len(skipped) >= count else None


def _phantom_within_5_percent(tmp_path: Path, *config: str):
    phantom_dir, out_dir = tmp_path / "phantom", tmp_path / "out"
    assert _lungnode("phantom", "--out", str(phantom_dir), "--seed", "0").returncode == 0
    truth = json.loads((phantom_dir / "truth.json").read_text())
    done = _lungnode("analyze", str(phantom_dir), "--out", str(out_dir), *config)
    assert done.returncode == 0, done.stderr
    measured = json.loads((out_dir / "measurements.json").read_text())
    assert abs(measured["lung_volume_ml"] / truth["lung_volume_ml"] - 1) <= 0.05
    for key in ("ggo_volume_ml", "consolidation_volume_ml"):
        error = abs(measured[key] - truth[key]) / truth[key]
        assert error <= 0.05, f"{key}: measured {measured[key]:.1f} vs truth {truth[key]:.1f}"


@pytest.mark.xfail(strict=True, reason=(
    "known failure: the learned lungs (weights of 2026-12-02) take ~470 ml of soft tissue, mostly "
    "under the phantom's flat lung bases, and miss ~155 ml (Dice 0.94); the lesion "
    "net finds 13 of the 47.5 ml of consolidation (it misses the pleural plaque at the chest "
    "wall) and calls about as much soft tissue in the lung bases consolidation"))
def test_phantom_lesions_are_found_where_they_are():
    """The voxels behind the phantom figures: at least 80% of the truth GGO and of the truth
    consolidation inside the node's lesion mask, and the lungs with Dice >= 0.97."""
    import numpy as np

    from node.phantom import phantom_with_labels
    from segmentation.engine import segment
    from segmentation.types import Volume

    vol, _truth, labels = phantom_with_labels(seed=0)
    masks = segment(Volume(vol.hu.astype(np.float32), vol.spacing_mm), engine="unet", device="cpu")
    lung = masks.lung_left | masks.lung_right
    dice = 2 * (lung & labels["lung"]).sum() / (lung.sum() + labels["lung"].sum())
    ggo_found = (masks.lesion & labels["ggo"]).sum() / labels["ggo"].sum()
    cons_found = (masks.lesion & labels["consolidation"]).sum() / labels["consolidation"].sum()
    assert ggo_found >= 0.8, f"GGO found {ggo_found:.2f}"
    assert dice >= 0.97, f"lung Dice {dice:.3f}"
    assert cons_found >= 0.8, f"consolidation found {cons_found:.2f}"


@pytest.mark.xfail(strict=True, reason="issue 6 target not met: with the default engines the phantom's "
                   "GGO is about 15% short (the network's mask stops one voxel inside the opacity) and "
                   "the lung about 6% over (soft tissue under its flat lung bases taken as lung)")
def test_phantom_default_engines_within_5_percent(tmp_path: Path):
    """The issue-6 target: `lungnode phantom` + `lungnode analyze` with the default engines
    within 5% for lung, GGO and consolidation. Strict xfail: it fails loudly once it passes."""
    _phantom_within_5_percent(tmp_path)


@pytest.mark.xfail(strict=True, reason="with the lung weights of 2026-12-02 the phantom's lung is about "
                   "6% over (+314 ml: soft tissue under its flat, soft-tissue lung bases is taken as "
                   "dense lung); GGO and consolidation are within 5% with the margin")
def test_phantom_within_5_percent_with_the_lesion_margin(tmp_path: Path):
    """With analysis.lesion_margin (off by default, see the README) the phantom's volumes are
    within 5% (by volume; where the voxels lie is the next test's business)."""
    config = tmp_path / "margin.yaml"
    config.write_text("analysis:\n  lesion_margin: true\n", encoding="utf-8")
    _phantom_within_5_percent(tmp_path, "--config", str(config))
