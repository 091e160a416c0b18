"""SEG and TID 1500 SR from a small real series (CIP ct-64, 79 slices 64x64) and HU-threshold
masks (the real segmentation lives elsewhere), round-tripped through bytes and dciodvfy."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from node.outputs import build_segs, build_sr
from node.outputs.seg import SEG_TRANSFER_SYNTAX
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
    ggo &= ~consolidation  # the HU split makes them disjoint
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


SERIES_NUMBERS = {"lesions": 901, "lungs": 903, "lobes": 904}


@pytest.fixture(scope="module")
def segs_and_masks(series: LoadedSeries):
    masks, ggo, consolidation = _masks(series, with_lobes=True)
    segs = build_segs(series, masks, ggo, consolidation, series_numbers=SERIES_NUMBERS,
                      revision=1, software_version=VERSION)
    return segs, masks, ggo, consolidation


def _deflated_roundtrip(ds: pydicom.Dataset, tmp_path: Path, name: str):
    ds.file_meta.TransferSyntaxUID = SEG_TRANSFER_SYNTAX
    return _roundtrip(ds, tmp_path, name)


@pytest.mark.parametrize("group", ["lesions", "lungs", "lobes"])
def test_each_seg_keeps_every_source_frame(series, segs_and_masks, tmp_path, group) -> None:
    segs, masks, ggo, consolidation = segs_and_masks
    expected = {
        "lesions": [ggo, consolidation],
        "lungs": [masks.lung_left, masks.lung_right],
        "lobes": [masks.lobes == value for value in range(1, 6)],
    }[group]
    back, path = _deflated_roundtrip(segs[group], tmp_path, f"seg_{group}.dcm")
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    n = len(series.source_datasets)
    assert int(back.NumberOfFrames) == n * len(expected)  # no frame omitted, empty ones kept
    pixels = back.pixel_array.reshape(int(back.NumberOfFrames), 64, 64)
    index_by_sop = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    seen = set()
    for frame, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index_by_sop[sop]
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == pytest.approx(list(series.image_positions_patient[k]), abs=1e-3)
        np.testing.assert_array_equal(pixels[frame].astype(bool), expected[segment - 1][k])
        seen.add((k, segment))
    assert len(seen) == n * len(expected)
    assert back.StudyInstanceUID == series.study_instance_uid
    assert back.FrameOfReferenceUID == series.frame_of_reference_uid
    assert back.SeriesInstanceUID != series.series_instance_uid
    assert int(back.SeriesNumber) == SERIES_NUMBERS[group]
    assert back.SegmentationType == "BINARY"
    assert back.SeriesDescription == {
        "lesions": "Lesions: GGO and consolidation (lungnode)",
        "lungs": "Lungs: left and right (lungnode)",
        "lobes": "Lung lobes (lungnode)"}[group]
    # the second reader: highdicom gives back the same voxels per segment
    reread = hd.seg.Segmentation.from_dataset(back)
    for number, mask in enumerate(expected, start=1):
        volume = reread.get_pixels_by_source_instance(
            source_sop_instance_uids=list(series.sop_instance_uids), segment_numbers=[number])
        assert int(volume.sum()) == int(np.count_nonzero(mask)), (group, number)
    warnings = _assert_valid(path)
    # the only warnings come from the source's retired-form person names
    assert all("Retired Person Name form" in w for w in warnings), warnings


def test_seg_deflate_shrinks_the_file(segs_and_masks, tmp_path) -> None:
    seg = segs_and_masks[0]["lesions"]
    plain = io.BytesIO()
    seg.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    seg.save_as(plain, enforce_file_format=True)
    _, path = _deflated_roundtrip(seg, tmp_path, "deflated.dcm")
    assert path.stat().st_size < len(plain.getvalue()) / 3


def test_segments_of_a_group_never_overlap(series) -> None:
    masks, ggo, consolidation = _masks(series, with_lobes=False)
    with pytest.raises(ValueError, match="overlaps"):
        build_segs(series, masks, ggo, ggo, series_numbers=SERIES_NUMBERS, revision=1,
                   software_version=VERSION)


def test_seg_segments_and_codes(segs_and_masks) -> None:
    segs = segs_and_masks[0]
    assert sorted(segs) == ["lesions", "lobes", "lungs"]

    def by_number(seg):
        return {int(s.SegmentNumber): s for s in seg.SegmentSequence}

    def code(item, seq):
        c = getattr(item, seq)[0]
        return c.CodingSchemeDesignator, c.CodeValue

    lesions, lungs = by_number(segs["lesions"]), by_number(segs["lungs"])
    assert {n: s.SegmentLabel for n, s in lesions.items()} == {
        1: "Ground glass opacity", 2: "Consolidation"}
    assert {n: s.SegmentLabel for n, s in lungs.items()} == {1: "Left lung", 2: "Right lung"}
    assert code(lungs[1], "SegmentedPropertyTypeCodeSequence") == ("SCT", "39607008")
    modifier = lungs[1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert (modifier[0].CodeValue, modifier[0].CodeMeaning) == ("7771000", "Left")
    modifier = lungs[2].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert modifier[0].CodeValue == "24028007"
    assert code(lesions[1], "SegmentedPropertyTypeCodeSequence") == ("DCM", "112120")
    assert code(lesions[2], "SegmentedPropertyTypeCodeSequence") == ("SCT", "95436008")
    assert code(lungs[1], "SegmentedPropertyCategoryCodeSequence") == ("SCT", "91723000")
    assert code(lesions[1], "SegmentedPropertyCategoryCodeSequence") == ("SCT", "49755003")
    for seg in segs.values():
        for s in seg.SegmentSequence:
            assert s.SegmentAlgorithmType == "AUTOMATIC"
            assert s.SegmentAlgorithmName == "lungnode threshold"


def test_seg_uids_are_deterministic(series, segs_and_masks) -> None:
    segs = segs_and_masks[0]
    masks, ggo, consolidation = _masks(series, with_lobes=True)
    again = build_segs(series, masks, ggo, consolidation, series_numbers=SERIES_NUMBERS,
                       revision=1, software_version=VERSION)
    other = build_segs(series, masks, ggo, consolidation, series_numbers=SERIES_NUMBERS,
                       revision=2, software_version=VERSION)
    for group, seg in segs.items():
        assert (again[group].SeriesInstanceUID, again[group].SOPInstanceUID) == (
            seg.SeriesInstanceUID, seg.SOPInstanceUID)
        assert other[group].SOPInstanceUID != seg.SOPInstanceUID
    assert len({seg.SeriesInstanceUID for seg in segs.values()}) == 3


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


def _segs_without_lobes(series):
    masks, ggo, consolidation = _masks(series, with_lobes=False)
    return build_segs(series, masks, ggo, consolidation, series_numbers=SERIES_NUMBERS,
                      revision=1, software_version=VERSION)


def _references(sr: pydicom.Dataset) -> dict[str, tuple[str, int]]:
    """tracking identifier -> (referenced SEG SOP Instance UID, segment number)."""
    imaging = next(i for i in sr.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    out = {}
    for group in imaging.ContentSequence:
        tracking = next(i.TextValue for i in group.ContentSequence
                        if i.ConceptNameCodeSequence[0].CodeValue == "112039")
        for item in group.ContentSequence:
            if item.ValueType == "IMAGE" and "ReferencedSegmentNumber" in item.ReferencedSOPSequence[0]:
                ref = item.ReferencedSOPSequence[0]
                out[tracking] = (ref.ReferencedSOPInstanceUID, int(ref.ReferencedSegmentNumber))
    return out


def test_sr_contains_the_measurements_rounded(series, tmp_path) -> None:
    segs = _segs_without_lobes(series)
    assert "lobes" not in segs
    m = _measurements(with_lobes=False)
    sr = build_sr(series, segs, m, series_number=902, revision=1, software_version=VERSION)
    back, path = _roundtrip(sr, tmp_path, "sr.dcm")
    assert back.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert back.StudyInstanceUID == series.study_instance_uid
    assert back.SeriesDescription == "Lung quantification report (lungnode)"
    assert "PredecessorDocumentsSequence" not in back
    values = _num_items(back)
    # numbers as a radiologist reads them: ml to 1 from 100 ml, else 0.1; % to 0.1; scores int
    assert values[("Whole lung", "Volume")] == 4013            # 4012.5
    assert values[("Whole lung", "Lesion percent of lung volume")] == 7.5   # 7.51
    assert values[("Whole lung", "Ground glass opacity volume")] == 251     # 250.5
    assert values[("Whole lung", "Consolidation volume")] == 50.8           # 50.75
    assert values[("Left lung", "Volume")] == 1900
    assert values[("Right lung", "Lesion volume (GGO and consolidation)")] == 201  # 200.75
    assert values[("Ground glass opacity", "Volume")] == 251
    assert values[("Ground glass opacity", "Percent of lung volume")] == 6.2
    assert values[("Consolidation", "Percent of lung volume")] == 1.3
    assert values[("Whole lung", "CT severity score equivalent from lesion percent")] == 6  # 5.5
    assert values[("Whole lung", "Hellinger distance of lung HU histogram to normal reference")
                  ] == 0.31
    raw = [item.MeasuredValueSequence[0].NumericValue for item in _all_nums(back)]
    assert all(len(str(v).replace("-", "").replace(".", "")) <= 6 for v in raw), raw
    # None is never written as a number, and it is said so
    assert ("Whole lung", "CT severity score (0-25)") not in values
    assert ("Whole lung", "Intersection over union with reference lung mask") not in values
    texts = _texts(back)
    assert "whole lung: CT severity score (0-25) not computed" in texts
    assert "lobes unavailable: fissures not found" in texts
    # each group references its segment in its own group's SEG
    refs = _references(back)
    assert refs == {
        "Left lung": (segs["lungs"].SOPInstanceUID, 1),
        "Right lung": (segs["lungs"].SOPInstanceUID, 2),
        "Ground glass opacity": (segs["lesions"].SOPInstanceUID, 1),
        "Consolidation": (segs["lesions"].SOPInstanceUID, 2),
    }
    evidence = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                for s in back.CurrentRequestedProcedureEvidenceSequence
                for i in s.ReferencedSeriesSequence}
    assert evidence  # the evidence lists the source and the SEGs
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


def _all_nums(sr):
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "NUM":
            yield item
        stack.extend(getattr(item, "ContentSequence", []))


def test_sr_amends_its_predecessor(series, tmp_path) -> None:
    segs = _segs_without_lobes(series)
    m = _measurements(with_lobes=False)
    first = build_sr(series, segs, m, series_number=902, revision=1, software_version=VERSION)
    pre = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID)
    amended = build_sr(series, segs, m, series_number=902, revision=2, software_version=VERSION,
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
    again = build_sr(series, segs, m, series_number=902, revision=2, software_version=VERSION,
                     predecessor=pre)
    assert again.SOPInstanceUID == amended.SOPInstanceUID  # deterministic
    with pytest.raises(ValueError, match="cannot amend itself"):
        build_sr(series, segs, m, series_number=902, revision=1, software_version=VERSION,
                 predecessor=pre)
    _assert_valid(path)


def test_seg_and_sr_with_lobes(series, segs_and_masks, tmp_path) -> None:
    segs = segs_and_masks[0]
    labels = [s.SegmentLabel for s in segs["lobes"].SegmentSequence]
    assert labels == ["Left upper lobe", "Left lower lobe", "Right upper lobe",
                      "Right middle lobe", "Right lower lobe"]
    lobe_codes = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue
                  for s in segs["lobes"].SegmentSequence]
    assert lobe_codes == ["45653009", "90572001", "45653009", "72481006", "90572001"]
    sides = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0]
             .SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
             for seg in segs.values() for s in seg.SegmentSequence
             if "SegmentedPropertyTypeModifierCodeSequence" in s.SegmentedPropertyTypeCodeSequence[0]}
    assert sides == {"Left lung": "Left", "Right lung": "Right", "Left upper lobe": "Left",
                     "Left lower lobe": "Left", "Right upper lobe": "Right",
                     "Right middle lobe": "Right", "Right lower lobe": "Right"}
    m = _measurements(with_lobes=True)
    sr = build_sr(series, segs, m, series_number=902, revision=1, software_version=VERSION)
    back, sr_path = _roundtrip(sr, tmp_path, "sr-lobes.dcm")
    values = _num_items(back)
    assert values[("Whole lung", "CT severity score (0-25)")] == 7
    assert values[("Whole lung", "Number of involved lobes")] == 4
    assert values[("Left lower lobe", "Lobe involvement score (0-5)")] == 2
    assert values[("Right lower lobe", "Volume")] == 505
    assert ("Right lower lobe", "Lobe involvement score (0-5)") not in values
    assert "lobe left_lower: boundary confidence low" in _texts(back)
    refs = _references(back)
    assert refs["Left upper lobe"] == (segs["lobes"].SOPInstanceUID, 1)
    assert refs["Right lower lobe"] == (segs["lobes"].SOPInstanceUID, 5)
    unexpected = [w for w in _assert_valid(sr_path) if PRIVATE_SCHEME not in w
                  and "CodingSchemeUID" not in w and "Retired Person Name form" not in w]
    assert unexpected == []
