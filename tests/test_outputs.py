"""SEG and TID 1500 SR from a small real series (CIP ct-64, 79 slices 64x64) and HU-threshold
masks (the real segmentation lives elsewhere), round-tripped through bytes and dciodvfy."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.outputs import build_seg, build_sr
from node.outputs.codes import PRIVATE_SCHEME
from node.volume import LoadedSeries, load_series
from quant.measurements import LobeMeasurement, Measurements, RegionMeasurement
from segmentation.types import LOBE_KEYS, Lobe, Masks
from dicom_validation import DCIODVFY, dciodvfy_errors, dciodvfy_warnings

CIP = Path("/work/shared/data/chest_imaging_platform_ct64/ct-64Dicom")
pytestmark = pytest.mark.skipif(not CIP.is_dir(), reason="shared/data is not mounted")
VERSION = "0.1.0-test"


@pytest.fixture(scope="module")
def series() -> LoadedSeries:
    return load_series(sorted(CIP.glob("*.dcm")))


def _masks(series: LoadedSeries, with_lobes: bool) -> tuple[Masks, np.ndarray, np.ndarray]:
    hu = series.volume.hu
    lung = (hu > -1000) & (hu < -400)
    x = np.arange(hu.shape[2])[None, None, :]
    right = lung & (x < hu.shape[2] // 2)   # HFS, row cosines +x: low columns = patient right
    left = lung & ~right
    ggo = lung & (hu > -750)
    consolidation = np.zeros_like(lung)
    z0 = hu.shape[0] // 2
    consolidation[z0:z0 + 3, 25:30, 15:20] = True
    lobes = None
    if with_lobes:
        z = np.arange(hu.shape[0])[:, None, None]
        lobes = np.zeros(hu.shape, np.uint8)
        lobes[left & (z >= z0)] = Lobe.LEFT_UPPER
        lobes[left & (z < z0)] = Lobe.LEFT_LOWER
        lobes[right & (z >= 2 * z0 // 3 + z0 // 3 * 2)] = Lobe.RIGHT_UPPER
        lobes[right & (z >= z0 // 2) & (lobes == 0)] = Lobe.RIGHT_MIDDLE
        lobes[right & (lobes == 0)] = Lobe.RIGHT_LOWER
    masks = Masks(lung_left=left, lung_right=right, lesion=ggo | consolidation,
                  engine="threshold", lobes=lobes,
                  lobes_unavailable_reason=None if with_lobes else "fissures not found")
    return masks, ggo, consolidation


def _measurements(with_lobes: bool) -> Measurements:
    lobes = None
    if with_lobes:
        lobes = {key: LobeMeasurement(volume_ml=500.0 + i, lesion_volume_ml=10.0 * i,
                                      lesion_pct=2.0 * i, score=i if i < 5 else None,
                                      confidence="low" if i == 2 else "high")
                 for i, key in enumerate(LOBE_KEYS.values(), start=1)}
    return Measurements(
        lung_volume_ml=4012.5, lesion_volume_ml=301.25, ggo_volume_ml=250.5,
        consolidation_volume_ml=50.75, lesion_pct=7.51, ggo_pct=6.24, consolidation_pct=1.26,
        ct_score=7 if with_lobes else None, ct_score_equivalent=5.5,
        involved_lobes=4 if with_lobes else None, hellinger_distance=0.3125,
        iou_vs_reference=None,
        regions={"left_lung": RegionMeasurement(1900.0, 100.5, 80.25, 20.25, 5.29),
                 "right_lung": RegionMeasurement(2112.5, 200.75, 170.25, 30.5, 9.5)},
        lobes=lobes, engine="threshold",
        quality_flags=[] if with_lobes else ["lobes unavailable: fissures not found"],
    )


def _roundtrip(ds: pydicom.Dataset, tmp_path: Path, name: str) -> tuple[pydicom.Dataset, Path]:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return pydicom.dcmread(io.BytesIO(buffer.getvalue())), path


def _assert_valid(path: Path) -> list[str]:
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: IOD validation not run")
    assert dciodvfy_errors(path) == []
    return dciodvfy_warnings(path)


@pytest.fixture(scope="module")
def seg_and_masks(series: LoadedSeries):
    masks, ggo, consolidation = _masks(series, with_lobes=False)
    seg = build_seg(series, masks, ggo, consolidation, series_number=901, revision=1,
                    software_version=VERSION)
    return seg, masks, ggo, consolidation


def test_seg_frames_align_with_the_source(series, seg_and_masks, tmp_path) -> None:
    seg, masks, ggo, consolidation = seg_and_masks
    back, path = _roundtrip(seg, tmp_path, "seg.dcm")
    stacked = np.stack([masks.lung_left, masks.lung_right, ggo, consolidation], axis=-1)
    expected_frames = int(sum(stacked[..., s].reshape(len(stacked), -1).any(axis=1).sum()
                              for s in range(4)))
    assert int(back.NumberOfFrames) == expected_frames  # empty frames omitted
    pixels = back.pixel_array.reshape(expected_frames, 64, 64)
    index_by_sop = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    seen = set()
    for frame, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index_by_sop[sop]
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == pytest.approx(list(series.image_positions_patient[k]), abs=1e-3)
        np.testing.assert_array_equal(pixels[frame].astype(bool), stacked[k, :, :, segment - 1])
        seen.add((k, segment))
    assert len(seen) == expected_frames
    assert back.StudyInstanceUID == series.study_instance_uid
    assert back.FrameOfReferenceUID == series.frame_of_reference_uid
    assert back.SeriesInstanceUID != series.series_instance_uid
    assert back.SegmentationType == "BINARY"
    assert back.SeriesDescription == "Lung/GGO/consolidation (lungnode)"
    warnings = _assert_valid(path)
    # the only warnings come from the source's retired-form person names
    assert all("Retired Person Name form" in w for w in warnings), warnings


def test_seg_segments_and_codes(seg_and_masks) -> None:
    seg = seg_and_masks[0]
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert sorted(segments) == [1, 2, 3, 4]
    labels = {n: s.SegmentLabel for n, s in segments.items()}
    assert labels == {1: "Left lung", 2: "Right lung", 3: "Ground glass opacity",
                      4: "Consolidation"}

    def code(item, seq):
        c = getattr(item, seq)[0]
        return c.CodingSchemeDesignator, c.CodeValue

    assert code(segments[1], "SegmentedPropertyTypeCodeSequence") == ("SCT", "39607008")
    modifier = segments[1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert (modifier[0].CodeValue, modifier[0].CodeMeaning) == ("7771000", "Left")
    modifier = segments[2].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert modifier[0].CodeValue == "24028007"
    assert code(segments[3], "SegmentedPropertyTypeCodeSequence") == ("DCM", "112120")
    assert code(segments[4], "SegmentedPropertyTypeCodeSequence") == ("SCT", "95436008")
    assert code(segments[1], "SegmentedPropertyCategoryCodeSequence") == ("SCT", "91723000")
    assert code(segments[3], "SegmentedPropertyCategoryCodeSequence") == ("SCT", "49755003")
    for s in segments.values():
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert s.SegmentAlgorithmName == "lungnode threshold"


def test_seg_uids_are_deterministic(series, seg_and_masks) -> None:
    seg = seg_and_masks[0]
    masks, ggo, consolidation = _masks(series, with_lobes=False)
    again = build_seg(series, masks, ggo, consolidation, series_number=901, revision=1,
                      software_version=VERSION)
    other = build_seg(series, masks, ggo, consolidation, series_number=901, revision=2,
                      software_version=VERSION)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (seg.SeriesInstanceUID,
                                                               seg.SOPInstanceUID)
    assert other.SOPInstanceUID != seg.SOPInstanceUID


def _num_items(sr: pydicom.Dataset) -> dict[tuple[str, str], float]:
    """(tracking identifier, concept meaning) -> value for every NUM in every group."""
    out: dict[tuple[str, str], float] = {}
    root = sr.ContentSequence
    imaging = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in imaging.ContentSequence:
        tracking = next(i.TextValue for i in group.ContentSequence
                        if i.ConceptNameCodeSequence[0].CodeValue == "112039")
        for item in group.ContentSequence:
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0].NumericValue
                out[(tracking, item.ConceptNameCodeSequence[0].CodeMeaning)] = float(value)
    return out


def _texts(sr: pydicom.Dataset) -> list[str]:
    container = next(i for i in sr.ContentSequence
                     if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    return [i.TextValue for i in container.ContentSequence]


def test_sr_contains_the_measurements(series, seg_and_masks, tmp_path) -> None:
    seg = seg_and_masks[0]
    m = _measurements(with_lobes=False)
    sr = build_sr(series, seg, m, series_number=902, revision=1, software_version=VERSION)
    back, path = _roundtrip(sr, tmp_path, "sr.dcm")
    assert back.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert back.StudyInstanceUID == series.study_instance_uid
    assert back.SeriesDescription == "Lung quantification report (lungnode)"
    assert "PredecessorDocumentsSequence" not in back
    values = _num_items(back)
    assert values[("Whole lung", "Volume")] == pytest.approx(m.lung_volume_ml)
    assert values[("Whole lung", "Lesion percent of lung volume")] == pytest.approx(m.lesion_pct)
    assert values[("Whole lung", "Ground glass opacity volume")] == pytest.approx(m.ggo_volume_ml)
    assert values[("Whole lung", "Consolidation volume")] == pytest.approx(m.consolidation_volume_ml)
    assert values[("Left lung", "Volume")] == pytest.approx(1900.0)
    assert values[("Right lung", "Lesion volume (GGO and consolidation)")] == pytest.approx(200.75)
    assert values[("Ground glass opacity", "Volume")] == pytest.approx(m.ggo_volume_ml)
    assert values[("Ground glass opacity", "Percent of lung volume")] == pytest.approx(m.ggo_pct)
    assert values[("Consolidation", "Percent of lung volume")] == pytest.approx(m.consolidation_pct)
    assert values[("Whole lung", "CT severity score equivalent from lesion percent")] == 5.5
    # None is never written as a number, and it is said so
    assert ("Whole lung", "CT severity score (0-25)") not in values
    assert ("Whole lung", "Intersection over union with reference lung mask") not in values
    texts = _texts(back)
    assert "whole lung: CT severity score (0-25) not computed" in texts
    assert "lobes unavailable: fissures not found" in texts
    # groups reference their SEG segment
    imaging = next(i for i in back.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    referenced = sorted(
        int(i.ReferencedSOPSequence[0].ReferencedSegmentNumber)
        for g in imaging.ContentSequence for i in g.ContentSequence if i.ValueType == "IMAGE"
        and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0])
    assert referenced == [1, 2, 3, 4]
    procedure = next(i for i in back.ContentSequence
                     if i.ConceptNameCodeSequence[0].CodeValue == "121058")
    assert procedure.ConceptCodeSequence[0].CodeValue == "169069000"
    assert back.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    # highdicom can read it back
    report = hd.sr.Comprehensive3DSR.from_dataset(back)
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 4
    warnings = _assert_valid(path)
    unexpected = [w for w in warnings if PRIVATE_SCHEME not in w and "CodingSchemeUID" not in w
                  and "Retired Person Name form" not in w]
    assert unexpected == []


def test_sr_amends_its_predecessor(series, seg_and_masks, tmp_path) -> None:
    seg = seg_and_masks[0]
    m = _measurements(with_lobes=False)
    first = build_sr(series, seg, m, series_number=902, revision=1, software_version=VERSION)
    pre = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID)
    amended = build_sr(series, seg, m, series_number=902, revision=2, software_version=VERSION,
                       predecessor=pre)
    back, path = _roundtrip(amended, tmp_path, "sr-amended.dcm")
    assert back.SOPInstanceUID != first.SOPInstanceUID
    assert "amended" in back.SeriesDescription
    item = back.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == pre[0]
    assert item.ReferencedSeriesSequence[0].SeriesInstanceUID == pre[1]
    sop = item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert sop.ReferencedSOPInstanceUID == pre[2]
    assert sop.ReferencedSOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert f"amends report {pre[2]}" in _texts(back)
    again = build_sr(series, seg, m, series_number=902, revision=2, software_version=VERSION,
                     predecessor=pre)
    assert again.SOPInstanceUID == amended.SOPInstanceUID  # deterministic
    with pytest.raises(ValueError, match="cannot amend itself"):
        build_sr(series, seg, m, series_number=902, revision=1, software_version=VERSION,
                 predecessor=pre)
    _assert_valid(path)


def test_seg_and_sr_with_lobes(series, tmp_path) -> None:
    masks, ggo, consolidation = _masks(series, with_lobes=True)
    seg = build_seg(series, masks, ggo, consolidation, series_number=901, revision=1,
                    software_version=VERSION)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[4:] == ["Left upper lobe", "Left lower lobe", "Right upper lobe",
                          "Right middle lobe", "Right lower lobe"]
    lobe_codes = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence[4:]]
    assert lobe_codes == ["45653009", "90572001", "45653009", "72481006", "90572001"]
    sides = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0]
             .SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
             for s in seg.SegmentSequence
             if "SegmentedPropertyTypeModifierCodeSequence" in s.SegmentedPropertyTypeCodeSequence[0]}
    assert sides == {"Left lung": "Left", "Right lung": "Right", "Left upper lobe": "Left",
                     "Left lower lobe": "Left", "Right upper lobe": "Right",
                     "Right middle lobe": "Right", "Right lower lobe": "Right"}
    m = _measurements(with_lobes=True)
    sr = build_sr(series, seg, m, series_number=902, revision=1, software_version=VERSION)
    back_seg, seg_path = _roundtrip(seg, tmp_path, "seg-lobes.dcm")
    back, sr_path = _roundtrip(sr, tmp_path, "sr-lobes.dcm")
    values = _num_items(back)
    assert values[("Whole lung", "CT severity score (0-25)")] == 7
    assert values[("Whole lung", "Number of involved lobes")] == 4
    assert values[("Left lower lobe", "Lobe involvement score (0-5)")] == 2
    assert values[("Right lower lobe", "Volume")] == pytest.approx(505.0)
    assert ("Right lower lobe", "Lobe involvement score (0-5)") not in values
    assert "lobe left_lower: boundary confidence low" in _texts(back)
    assert all("Retired Person Name form" in w for w in _assert_valid(seg_path))
    unexpected = [w for w in _assert_valid(sr_path) if PRIVATE_SCHEME not in w
                  and "CodingSchemeUID" not in w and "Retired Person Name form" not in w]
    assert unexpected == []
