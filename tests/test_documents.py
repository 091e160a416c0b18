"""The report outputs (Encapsulated PDF, summary and overlay secondary captures) and real
headers without Type 2 attributes: every output is written with them present and empty,
and dciodvfy finds no error in any of them.

Real exports lack them (COVID-CT-MD has no PatientName or PatientBirthDate, but its UIDs are
UUID strings that the node refuses before any output is made), so the test takes the real
CIP ct-64 headers and removes every Type 2 patient/study attribute, as such an export would.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.outputs import build_segs, build_sr, documents, render
from node.outputs.header import TYPE2_PATIENT_STUDY
from node.outputs.rounding import formatted, rounded
from node.volume import load_series
from quant.measurements import Measurements, RegionMeasurement
from segmentation.types import Masks
from dicom_validation import DCIODVFY, dciodvfy_errors

DATA = Path("/work/shared/data")
CIP = DATA / "chest_imaging_platform_ct64" / "ct-64Dicom"
VERSION = "0.1.0-test"


def _save(ds, tmp_path: Path, name: str) -> Path:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return path


def _masks(hu: np.ndarray):
    lung = (hu > -1000) & (hu < -400)
    x = np.arange(hu.shape[2])[None, None, :]
    right = lung & (x < hu.shape[2] // 2)
    left = lung & ~right
    ggo = lung & (hu > -700)
    consolidation = np.zeros_like(lung)
    z0, y0, x0 = (s // 2 for s in hu.shape)
    consolidation[z0:z0 + 2, y0:y0 + 4, x0 // 2:x0 // 2 + 4] = True
    ggo &= ~consolidation
    masks = Masks(lung_left=left, lung_right=right, lesion=ggo | consolidation,
                  engine="threshold", lobes=None, lobes_unavailable_reason="fissures not found")
    return masks, ggo, consolidation


def _measurements() -> Measurements:
    return Measurements(
        lung_volume_ml=4012.5, lesion_volume_ml=301.25, ggo_volume_ml=250.5,
        consolidation_volume_ml=50.75, lesion_pct=7.51, ggo_pct=6.24, consolidation_pct=1.26,
        ct_score=None, ct_score_equivalent=5.5, involved_lobes=None, hellinger_distance=0.3125,
        iou_vs_reference=None,
        regions={"left_lung": RegionMeasurement(1900.0, 100.5, 80.25, 20.25, 5.29),
                 "right_lung": RegionMeasurement(2112.5, 200.75, 170.25, 30.5, 9.5)},
        lobes=None, engine="threshold", quality_flags=["lobes unavailable: fissures not found"])


def test_rounding_as_a_radiologist_reads() -> None:
    assert rounded("ml", 4012.5) == 4013 and rounded("ml", 12.34) == 12.3
    assert rounded("ml", 99.96) == 100.0 and rounded("ml", 0.05) == 0.1
    assert rounded("percent", 7.45) == 7.5 and rounded("percent", 0.04) == 0.0
    assert rounded("score", 5.5) == 6 and isinstance(rounded("score", 2.4), int)
    assert rounded("index", 0.3125) == 0.31
    assert formatted("ml", 4012.5) == "4013 ml" and formatted("percent", 1.26) == "1.3 %"
    assert formatted("score", None) == "-"


@pytest.mark.skipif(not CIP.is_dir(), reason="shared/data is not mounted")
def test_headers_without_type2_attributes(tmp_path) -> None:
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    kept = ("PatientID",)  # an export keeps some identifier; every other Type 2 one goes
    for source in sorted(CIP.glob("*.dcm")):
        ds = pydicom.dcmread(source)
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword in ds and keyword not in kept:
                delattr(ds, keyword)
        ds.save_as(stripped / source.name)
    paths = sorted(stripped.glob("*.dcm"))
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert "PatientName" not in first and "StudyDate" not in first
    series = load_series(paths)
    masks, ggo, consolidation = _masks(series.volume.hu)
    segs = build_segs(series, masks, ggo, consolidation,
                      series_numbers={"lesions": 1, "lungs": 3, "lobes": 4}, revision=1,
                      software_version=VERSION)
    sr = build_sr(series, segs, _measurements(), series_number=2, revision=1,
                  software_version=VERSION)
    keys = render.key_slices(ggo.sum(axis=(1, 2)), masks.lung_left.sum(axis=(1, 2)))
    slices = [(f"slice {k + 1}", render.overlay_rgb(series.volume.hu[k], ggo[k],
                                                    consolidation[k])) for k in keys]
    page = render.render_report(_measurements(), title="t", subtitle="s", slices=slices)
    pdf = documents.build_pdf(series, page.pdf, series_number=5, revision=1,
                              software_version=VERSION)
    summary = documents.build_summary(series, page.rgb, series_number=6, revision=1,
                                      software_version=VERSION)
    overlay = next(iter(documents.build_overlay(series, [slices[0][1]], series_number=7,
                                                revision=1, software_version=VERSION)))
    outputs = {"seg.dcm": segs["lesions"], "seg_lungs.dcm": segs["lungs"], "sr.dcm": sr,
               "report.dcm": pdf, "summary.dcm": summary, "overlay_0001.dcm": overlay}
    for name, ds in outputs.items():
        path = _save(ds, tmp_path, name)
        back = pydicom.dcmread(path)
        for keyword in TYPE2_PATIENT_STUDY:
            assert keyword in back, (name, keyword)
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in kept:
                assert back[keyword].value in ("", None), (name, keyword)
        assert back.StudyInstanceUID == series.study_instance_uid
        assert back.PatientID == first.PatientID
        if DCIODVFY is not None:
            assert dciodvfy_errors(path) == [], name
    assert "PatientName" not in series.source_datasets[0]  # the source is left as it was


@pytest.mark.skipif(not CIP.is_dir(), reason="shared/data is not mounted")
def test_report_documents_are_viewable_dicom(tmp_path) -> None:
    series = load_series(sorted(CIP.glob("*.dcm")))
    masks, ggo, consolidation = _masks(series.volume.hu)
    m = _measurements()
    n = series.volume.hu.shape[0]
    images = [render.overlay_rgb(series.volume.hu[k], ggo[k], consolidation[k]) for k in range(n)]
    # GGO yellow, consolidation red, parenchyma grey
    k = int(np.argmax(consolidation.sum(axis=(1, 2))))
    ys, xs = np.nonzero(consolidation[k])
    r, g, b = (int(c) for c in images[k][ys[0], xs[0]])
    assert r > g and r > b
    page = render.render_report(m, title="Lung CT quantification (lungnode)", subtitle="s",
                                slices=[("a", images[k])])
    assert page.pdf.startswith(b"%PDF") and page.rgb.dtype == np.uint8 and page.rgb.shape[2] == 3
    assert page.rgb.shape[0] > page.rgb.shape[1] > 800  # a portrait page, readable

    pdf_path = _save(documents.build_pdf(series, page.pdf, series_number=9905, revision=1,
                                         software_version=VERSION), tmp_path, "report.dcm")
    back = pydicom.dcmread(pdf_path)
    assert back.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert back.Modality == "DOC" and back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(back.EncapsulatedDocument)[:back.EncapsulatedDocumentLength] == page.pdf
    assert back.StudyInstanceUID == series.study_instance_uid

    summary_path = _save(documents.build_summary(series, page.rgb, series_number=9906,
                                                 revision=1, software_version=VERSION),
                         tmp_path, "summary.dcm")
    back = pydicom.dcmread(summary_path)
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    np.testing.assert_array_equal(back.pixel_array, page.rgb)  # lossless

    overlays = list(documents.build_overlay(series, images, series_number=9907, revision=1,
                                            software_version=VERSION))
    assert len(overlays) == n
    assert len({o.SOPInstanceUID for o in overlays}) == n
    assert len({o.SeriesInstanceUID for o in overlays}) == 1
    assert [int(o.InstanceNumber) for o in overlays] == list(range(1, n + 1))
    mapping = documents.source_slice_of_canonical(series)
    assert sorted(mapping) == list(range(n))
    assert [o.SourceImageSequence[0].ReferencedSOPInstanceUID for o in overlays] == [
        series.sop_instance_uids[k] for k in mapping]
    path = _save(overlays[k], tmp_path, "overlay.dcm")
    back = pydicom.dcmread(path)
    np.testing.assert_array_equal(back.pixel_array, images[k])
    assert [float(v) for v in back.PixelSpacing] == pytest.approx(
        list(series.volume.spacing_mm[1:]))
    if DCIODVFY is not None:
        for p in (pdf_path, summary_path, path):
            assert dciodvfy_errors(p) == [], p.name


def test_report_page_shows_the_course_trend_when_there_is_a_prior():
    """Issue 9: with a prior scan the summary page carries a trend chart of the course
    (lesions, GGO, consolidation at each scan); without one it does not."""
    from datetime import datetime, timedelta, timezone

    from quant.course import CourseScan, build_course

    start = datetime(2020, 4, 1, 9, tzinfo=timezone.utc)

    def scan(day, lesion, ggo, cons):
        return CourseScan(study_uid=f"1.2.3.{day}", series_uid=f"1.2.3.{day}.1",
                          acquired_at=start + timedelta(days=day),
                          values={"lesion_volume_ml": lesion, "ggo_volume_ml": ggo,
                                  "consolidation_volume_ml": cons})

    course = build_course(scan(14, 300.0, 200.0, 100.0), [scan(0, 100.0, 90.0, 10.0),
                                                          scan(7, 400.0, 300.0, 100.0)])
    slice_rgb = np.zeros((64, 64, 3), np.uint8)
    slices = [("a", slice_rgb), ("b", slice_rgb), ("c", slice_rgb)]
    with_course = render.render_report(_measurements(), title="t", subtitle="s", slices=slices,
                                       course=course).rgb
    without = render.render_report(_measurements(), title="t", subtitle="s", slices=slices).rgb

    def near(rgb, colour):   # pixels of a trend line colour (#37474f lesions, #d84315 cons.)
        return int((np.abs(rgb.astype(int) - colour).sum(axis=2) < 30).sum())

    lesions, cons = (0x37, 0x47, 0x4f), (0xd8, 0x43, 0x15)
    assert near(with_course, lesions) > near(without, lesions) + 200   # the lesions line
    assert near(with_course, cons) > near(without, cons) + 200         # the consolidation line
    single = build_course(scan(0, 100.0, 90.0, 10.0), [])
    alone = render.render_report(_measurements(), title="t", subtitle="s", slices=slices,
                                 course=single).rgb
    assert near(alone, lesions) == near(without, lesions)   # one scan: no chart


@pytest.mark.skipif(not CIP.is_dir(), reason="shared/data is not mounted")
def test_overlay_images_after_the_first_are_what_highdicom_builds_for_them() -> None:
    """build_overlay builds the first image with highdicom and copies it for the others:
    each copy equals highdicom's own image for that slice (same attributes, values and
    pixel data bytes), apart from the creation times (the series' first image's)."""
    series = load_series(sorted(CIP.glob("*.dcm")))
    masks, ggo, consolidation = _masks(series.volume.hu)
    n = series.volume.hu.shape[0]
    images = [render.overlay_rgb(series.volume.hu[k], ggo[k], consolidation[k]) for k in range(n)]
    overlays = list(documents.build_overlay(series, images, series_number=9907, revision=1,
                                            software_version=VERSION))
    mapping = documents.source_slice_of_canonical(series)
    spacing = series.volume.spacing_mm
    times = {"InstanceCreationTime", "InstanceCreationDate", "ContentTime", "ContentDate",
             "TimeOfSecondaryCapture", "DateOfSecondaryCapture", "ContributingEquipmentSequence"}
    for k in (1, n // 2, n - 1):
        expected = documents._sc(
            series, images[k], kind="OVERLAY", instance=k + 1, series_number=9907, revision=1,
            software_version=VERSION, description=documents.OVERLAY_SERIES_DESCRIPTION,
            pixel_spacing=(float(spacing[1]), float(spacing[2])), orientation=("L", "P"),
            source_index=mapping[k])
        expected.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        expected.ImageComments = f"source slice {k + 1} of {len(series.source_datasets)}"
        got = overlays[k]
        assert {e.keyword for e in got} == {e.keyword for e in expected}
        for element in expected:
            if element.keyword not in times:
                assert got[element.tag].value == element.value, (k, element.keyword)
                assert got[element.tag].VR == element.VR, (k, element.keyword)
        assert got.file_meta == expected.file_meta
        a, b = io.BytesIO(), io.BytesIO()
        got.save_as(a, enforce_file_format=True)
        expected.save_as(b, enforce_file_format=True)
        assert len(a.getvalue()) == len(b.getvalue())  # same encoding, element for element


@pytest.mark.parametrize("lobe_dtype", [np.uint8, np.int32])
def test_overlay_colouring_is_the_float_blend_pixel_for_pixel(lobe_dtype) -> None:
    """overlay_rgb looks the lesion pixels up in a table: it must give what blending every
    pixel in float gives (render.blend, the definition), overlapping GGO and consolidation,
    grey values at both clip ends, labels without a colour (0, 6, 300) and no lobes included."""
    from node.outputs.codes import LOBES

    rng = np.random.default_rng(7)
    hu = rng.uniform(-1600, 600, (96, 80)).astype(np.float32)
    hu[0, :10] = -1350.0   # window's lower end
    hu[1, :10] = 150.0     # upper end
    ggo = rng.random(hu.shape) < 0.3
    consolidation = rng.random(hu.shape) < 0.3          # overlaps GGO on ~9 % of the pixels
    labels = [0, 1, 2, 3, 4, 5, 6] + ([300] if lobe_dtype is np.int32 else [])
    lobes = rng.choice(labels, size=(12, 10)).repeat(8, axis=0).repeat(8, axis=1).astype(lobe_dtype)

    expected = render.blend(render.window(hu), ggo, consolidation)
    assert np.array_equal(render.overlay_rgb(hu, ggo, consolidation), expected)
    border = render.lobe_borders(lobes)
    for spec in LOBES.segments:
        expected[border == spec.number] = spec.rgb
    got = render.overlay_rgb(hu, ggo, consolidation, lobes)
    assert got.dtype == np.uint8 and got.shape == hu.shape + (3,)
    assert (ggo & consolidation).any() and (border == 6).any()
    assert np.array_equal(got, expected)
