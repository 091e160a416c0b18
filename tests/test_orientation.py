"""Issue 6 item 4: every valid orientation of the same anatomy gives the same canonical LPS
volume, the same lungs and lobes, and a SEG whose segments land on the same patient voxels.

The variants are new DICOM series written by tests/orientation_variants.py from real CT
(CIP ct-64, LIDC-IDRI-0001): head-first / feet-first, supine / prone, mirrored, transposed,
sagittal and coronal stacks. Their pixel data come from physics (same patient position, same
stored value), not from node.volume's reorientation, so the two paths check each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_validation import DCIODVFY, dciodvfy_errors
from node.analysis import analyze_series
from node.config import load_settings
from node.volume import VolumeError, choose_reorientation, load_series
from orientation_variants import VARIANTS, physical_points, write_variant

DATA = Path("/work/shared/data")
CIP = DATA / "chest_imaging_platform_ct64" / "ct-64Dicom"
LIDC1 = DATA / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series"

pytestmark = pytest.mark.skipif(not CIP.is_dir(), reason="shared/data is not mounted")


def _cip_files() -> list[Path]:
    return sorted(CIP.glob("*.dcm"))


@pytest.fixture(scope="module")
def cip_variants(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("variants")
    return {name: write_variant(_cip_files(), root / name, name) for name in VARIANTS}


def test_nearest_axes_and_flips_from_the_orientation() -> None:
    # feet-first supine, mirrored: columns toward patient right, slices toward the feet
    r, direction = choose_reorientation((-1, 0, 0), (0, 1, 0), (0, 0, -1))
    assert r.axes == (0, 1, 2) and r.flips == (True, False, True)
    np.testing.assert_allclose(direction, np.eye(3))
    # sagittal: rows along P, columns toward the feet, slices toward patient right
    r, direction = choose_reorientation((0, 1, 0), (0, 0, -1), (-1, 0, 0))
    assert r.axes == (1, 2, 0) and r.flips == (True, False, True)
    np.testing.assert_allclose(direction, np.eye(3), atol=1e-12)
    # 10 degrees oblique about the patient's z axis: nearest axes, the tilt kept in direction
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    r, direction = choose_reorientation((c, s, 0), (-s, c, 0), (0, 0, 1))
    assert r.is_identity
    assert direction[2][1] == pytest.approx(s) and direction[2][2] == pytest.approx(c)
    # 40 degrees: refused, with the angle
    c, s = np.cos(np.radians(40)), np.sin(np.radians(40))
    with pytest.raises(VolumeError, match="oblique acquisition: an image axis is 40.0 degrees"):
        choose_reorientation((c, s, 0), (-s, c, 0), (0, 0, 1))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_orientation_loads_to_the_same_canonical_volume(cip_variants, name) -> None:
    reference = load_series(_cip_files())
    variant = load_series(cip_variants[name])
    np.testing.assert_array_equal(variant.volume.hu, reference.volume.hu)
    assert variant.volume.spacing_mm == pytest.approx(reference.volume.spacing_mm, abs=1e-3)
    assert variant.volume.origin_mm == pytest.approx(reference.volume.origin_mm, abs=1e-2)
    np.testing.assert_allclose(variant.volume.direction, np.eye(3), atol=1e-9)
    # the patient position of a voxel does not depend on the storage
    index = (10, 20, 30)
    np.testing.assert_allclose(variant.volume.patient_position_mm(index),
                               reference.volume.patient_position_mm(index), atol=1e-2)
    # to_source is the exact inverse, and it is the source stack's own pixel layout
    source = variant.to_source(variant.volume.hu)
    assert source.shape == variant.source_shape
    first = pydicom.dcmread(variant.paths[0])
    expected = first.pixel_array.astype(np.int32) * int(first.get("RescaleSlope", 1)) + int(
        first.get("RescaleIntercept", 0))
    np.testing.assert_array_equal(source[0], expected)
    np.testing.assert_array_equal(variant.to_canonical(source), variant.volume.hu)


def test_lidc_full_series_mirrored_and_prone_give_the_same_volume(tmp_path) -> None:
    if not LIDC1.is_dir():
        pytest.skip("LIDC-IDRI-0001 not available")
    files = sorted(LIDC1.glob("*.dcm"))
    reference = load_series(files)
    for name in ("feet_first_supine_mirrored", "head_first_prone"):
        variant = load_series(write_variant(files, tmp_path / name, name))
        np.testing.assert_array_equal(variant.volume.hu, reference.volume.hu)
        assert variant.volume.origin_mm == pytest.approx(reference.volume.origin_mm, abs=1e-2)


@pytest.fixture(scope="module")
def analysed(cip_variants, tmp_path_factory) -> dict[str, tuple[dict, Path, list[Path]]]:
    settings = load_settings()
    out = {}
    for name in ("head_first_supine", "feet_first_supine_mirrored", "head_first_prone",
                 "feet_first_prone", "transposed", "sagittal", "coronal"):
        files = cip_variants[name]
        result = analyze_series(files, tmp_path_factory.mktemp(f"out-{name}"), settings)
        out[name] = (json.loads(result.measurements_json.read_text()), result.output_files[0], files)
    return out


def _volumes(doc: dict) -> dict[str, float]:
    vols = {f"{k}": v["volume_ml"] for k, v in doc["regions"].items()}
    if doc["lobes"] is not None:
        vols.update({f"lobe {k}": v["volume_ml"] for k, v in doc["lobes"].items()})
    vols["lesion"] = doc["lesion_volume_ml"]
    return vols


@pytest.mark.parametrize("name", ["feet_first_supine_mirrored", "head_first_prone",
                                  "feet_first_prone", "transposed", "sagittal", "coronal"])
def test_same_lungs_lobes_and_seg_voxels_in_another_orientation(analysed, name) -> None:
    ref_doc, ref_seg, ref_files = analysed["head_first_supine"]
    doc, seg_path, files = analysed[name]
    ref_vols, vols = _volumes(ref_doc), _volumes(doc)
    assert ref_vols["left_lung"] > 100 and ref_vols["right_lung"] > 100
    assert ref_doc["lobes"] is not None
    for key, value in ref_vols.items():
        assert vols[key] == pytest.approx(value, rel=0.01, abs=0.5), key

    # SEG read back with highdicom: each frame references its own source slice, and every
    # segment covers the same patient voxels as in the head-first supine storage
    ref_headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in ref_files]
    ref_headers.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    origin = [float(v) for v in ref_headers[0].ImagePositionPatient]
    spacing = [float(ref_headers[0].PixelSpacing[1]), float(ref_headers[0].PixelSpacing[0]),
               float(ref_headers[1].ImagePositionPatient[2]) - origin[2]]

    def points(path: Path, source_files: list[Path]) -> dict[int, set]:
        seg = hd.seg.segread(path)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in source_files]
        uids = [ds.SOPInstanceUID for ds in headers]
        numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=numbers,
            assert_missing_frames_are_empty=True)
        assert pixels.shape[1:3] == (int(headers[0].Rows), int(headers[0].Columns))
        return {n: physical_points(pixels[..., i], headers, origin, spacing)
                for i, n in enumerate(numbers)}

    ref_points, var_points = points(ref_seg, ref_files), points(seg_path, files)
    assert set(var_points) == set(ref_points)
    for number, expected in ref_points.items():
        got = var_points[number]
        assert len(got ^ expected) <= 0.01 * max(1, len(expected)), number
    if DCIODVFY is not None:
        assert dciodvfy_errors(seg_path) == []


def test_left_lung_is_on_the_patients_left_in_every_storage(analysed) -> None:
    # Left lung voxels have larger LPS x (toward the patient's left) than right lung voxels,
    # measured in patient coordinates from the SEG of a mirrored storage.
    doc, seg_path, files = analysed["feet_first_supine_mirrored"]
    seg = hd.seg.segread(seg_path)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in headers], segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True)
    mean_x = []
    for i in range(2):
        xs = []
        for k, ds in enumerate(headers):
            _, cols = np.nonzero(pixels[k, ..., i])
            iop = [float(v) for v in ds.ImageOrientationPatient]
            xs.extend(float(ds.ImagePositionPatient[0]) + cols * float(ds.PixelSpacing[1]) * iop[0])
        mean_x.append(np.mean(xs))
    labels = [str(s.SegmentLabel).lower() for s in seg.SegmentSequence[:2]]
    assert "left" in labels[0] and "right" in labels[1]
    assert mean_x[0] > mean_x[1] + 50  # mm
