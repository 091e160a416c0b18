"""Series closing, the selection rules, and re-analysis of late instances (in-process Node,
instances sent with dcmtk storescu)."""

from __future__ import annotations

import os

import pydicom
import pytest

from node.app import Node
from node.config import SelectionSettings
from node.rules import DERIVED_REASON, evaluate_series
from node.store import JOB_DONE, SERIES_DONE, SERIES_SKIPPED
from node_testkit import FakeVolumeError, RecordingAnalysis, make_series, make_settings
from peers import storescu, wait_until


@pytest.fixture
def node_factory(tmp_path):
    nodes = []

    def make(analysis=None, **sections):
        node = Node(make_settings(tmp_path / f"node{len(nodes)}", **sections),
                    analyze=analysis or RecordingAnalysis(), bad_input_errors=(FakeVolumeError,))
        node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def _series_state(node, uid, state, timeout_s=15):
    return wait_until(lambda: (s := node.store.series(uid)) is not None and s.state == state and s,
                      timeout_s, what=f"series {state}")


def test_quiet_period_closes_and_analyses(node_factory, tmp_path):
    analysis = RecordingAnalysis()
    node = node_factory(analysis)
    files = make_series(tmp_path / "s1", 5)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert storescu(files, node.port).returncode == 0
    series = _series_state(node, uid, SERIES_DONE)
    assert series.revision == 1 and series.analysed_instance_count == 5
    assert analysis.calls == [{"n": 5, "revision": 1, "predecessor_sr": None}]
    result = node.store.latest_result(uid)
    assert (node.spool.outbox_path(uid, 1) / "sc.dcm").is_file()
    assert '"slices": 5' in result.measurements_json


def test_late_instances_start_revision_2_with_predecessor(node_factory, tmp_path):
    analysis = RecordingAnalysis()
    node = node_factory(analysis)
    first = make_series(tmp_path / "a", 4)
    ds = pydicom.dcmread(first[0])
    assert storescu(first, node.port).returncode == 0
    _series_state(node, ds.SeriesInstanceUID, SERIES_DONE)
    rev1 = node.store.latest_result(ds.SeriesInstanceUID)
    late = make_series(tmp_path / "b", 2, series_uid=ds.SeriesInstanceUID,
                       study_uid=ds.StudyInstanceUID, start=4)
    assert storescu(late, node.port).returncode == 0
    wait_until(lambda: node.store.latest_result(ds.SeriesInstanceUID).revision == 2, 15,
               what="revision 2")
    assert analysis.calls[1] == {"n": 6, "revision": 2, "predecessor_sr": rev1.sr_uids}
    jobs = node.store.jobs_for_series(ds.SeriesInstanceUID)
    assert [(j.revision, j.state) for j in jobs] == [(1, JOB_DONE), (2, JOB_DONE)]


@pytest.mark.parametrize("kwargs, reason", [
    ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "LOCALIZER"),
    ({"thickness": 8.0}, "slice thickness 8 mm"),
    ({"n": 2}, "2 distinct slice positions < 3"),
    ({"image_type": ("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE")}, "derived reconstruction"),
    ({"image_type": ("DERIVED", "SECONDARY", "AXIAL", "MIP")}, "ImageType contains MIP"),
    ({"orientation": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)}, "not axial"),
    ({"sop_class": "1.2.840.10008.5.1.4.1.1.7", "modality": "OT"}, DERIVED_REASON),
])
def test_rules_skip_with_reason(node_factory, tmp_path, kwargs, reason):
    analysis = RecordingAnalysis()
    node = node_factory(analysis)
    files = make_series(tmp_path / "s", **{"n": 4, **kwargs})
    assert storescu(files, node.port).returncode == 0
    series = _series_state(node, pydicom.dcmread(files[0]).SeriesInstanceUID, SERIES_SKIPPED)
    assert reason in series.reason
    assert analysis.calls == []


def test_rules_directly_seg_is_derived(shared_data):
    seg = pydicom.dcmread(shared_data / "dicom_interop/highdicom/seg_image_ct_binary.dcm",
                          stop_before_pixels=True)
    decision = evaluate_series([seg], SelectionSettings())
    assert not decision.selected and decision.reason == DERIVED_REASON


def test_bad_input_fails_job_without_crashing(node_factory, tmp_path):
    node = node_factory(RecordingAnalysis(fail_with=FakeVolumeError("slice gap at z=3")))
    files = make_series(tmp_path / "s", 4)
    assert storescu(files, node.port).returncode == 0
    series = _series_state(node, pydicom.dcmread(files[0]).SeriesInstanceUID, "failed")
    assert "slice gap" in series.reason


def test_retention_removes_spool_of_finished_series_and_keeps_measurements(node_factory, tmp_path):
    """After retention_days the spool of an analysed series goes; results stay recorded.
    Without destinations the outbox is where the results live, so it stays too."""
    node = node_factory(RecordingAnalysis(), storage={"retention_days": 1})
    files = make_series(tmp_path / "r", 4)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert storescu(files, node.port).returncode == 0
    series = _series_state(node, uid, SERIES_DONE)
    spooled = [i.path for i in node.store.series_instances(uid)]
    assert spooled and all(os.path.exists(p) for p in spooled)
    assert node.apply_retention(now=series.last_instance_at + 3600) == 0  # too early
    assert node.apply_retention(now=series.last_instance_at + 2 * 86400) == 1
    assert not any(os.path.exists(p) for p in spooled)
    assert node.store.latest_result(uid) is not None          # measurements stay
    assert (node.spool.outbox_path(uid, 1) / "sc.dcm").is_file()  # no destinations: kept
    assert node.apply_retention(now=series.last_instance_at + 3 * 86400) == 0  # once only
