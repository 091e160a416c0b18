"""node.volume.load_series on real series (shared/data, read-only) and edited copies in tmp."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from node.volume import LoadedSeries, VolumeError, load_series

DATA = Path("/work/shared/data")
LIDC1 = DATA / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series"
LIDC2 = DATA / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0002_subset"
LIDC3 = DATA / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0003_subset"
CIP = DATA / "chest_imaging_platform_ct64" / "ct-64Dicom"
TOTALSEG = DATA / "totalsegmentator_examples" / "example_ct_dicom"

pytestmark = pytest.mark.skipif(not LIDC1.is_dir(), reason="shared/data is not mounted")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm" or p.name.startswith("CT."))


def _copy(tmp_path: Path, sources: list[Path], edit=None, name: str = "s") -> list[Path]:
    """Copy ``sources`` into tmp_path/name, applying ``edit(index, dataset)`` before saving."""
    out_dir = tmp_path / name
    out_dir.mkdir()
    out = []
    for i, src in enumerate(sources):
        dst = out_dir / f"{i:04d}.dcm"
        if edit is None:
            shutil.copy(src, dst)
        else:
            ds = pydicom.dcmread(src)
            edit(i, ds)
            ds.save_as(dst)
        out.append(dst)
    return out


@pytest.fixture(scope="module")
def lidc1() -> LoadedSeries:
    return load_series(_files(LIDC1))


def test_lidc_full_series_loads(lidc1: LoadedSeries) -> None:
    vol = lidc1.volume
    assert vol.hu.shape == (133, 512, 512)
    assert vol.hu.dtype == np.int16
    assert vol.spacing_mm[0] == pytest.approx(2.5, abs=1e-3)
    assert vol.spacing_mm[1:] == pytest.approx((0.703125, 0.703125))
    assert int(vol.hu.min()) == -2048 and int(vol.hu.max()) == 3071
    assert -1000 < float(np.median(vol.hu)) < -850
    assert lidc1.slice_positions_mm[0] == pytest.approx(-340.0)
    assert lidc1.slice_positions_mm[-1] == pytest.approx(-10.0)
    assert np.all(np.diff(lidc1.slice_positions_mm) > 0)
    assert len(lidc1.source_datasets) == 133
    assert all("PixelData" not in ds for ds in lidc1.source_datasets)
    assert [ds.SOPInstanceUID for ds in lidc1.source_datasets] == list(lidc1.sop_instance_uids)
    assert lidc1.study_instance_uid == lidc1.source_datasets[0].StudyInstanceUID


def test_shuffled_order_gives_the_same_volume() -> None:
    files = _files(LIDC2)
    reference = load_series(files)
    shuffled = files[:]
    random.Random(7).shuffle(shuffled)
    again = load_series(shuffled)
    np.testing.assert_array_equal(reference.volume.hu, again.volume.hu)
    assert reference.sop_instance_uids == again.sop_instance_uids
    assert reference.volume.spacing_mm == pytest.approx(again.volume.spacing_mm)
    assert reference.volume.spacing_mm[0] == pytest.approx(1.25, abs=1e-3)


def test_missing_middle_slice_is_refused_with_the_gap() -> None:
    files = _files(LIDC3)  # 11 slices, 2.5 mm, -204 ... -179
    positions = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                       for f in files)
    removed = positions[5]
    keep = [f for f in files
            if float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) != removed]
    with pytest.raises(VolumeError, match="gap of 5.000 mm") as info:
        load_series(keep)
    message = str(info.value)
    assert f"{positions[4]:.3f} mm" in message and f"{positions[6]:.3f} mm" in message
    assert "1 slice(s) missing" in message


def test_duplicate_position_is_refused(tmp_path: Path) -> None:
    files = _files(CIP)[:4]

    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i == 3:  # a second instance at slice 2's position
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient

    with pytest.raises(VolumeError, match="duplicate slice position"):
        load_series(_copy(tmp_path, files, edit))


def test_same_file_twice_is_refused() -> None:
    files = _files(CIP)[:3]
    with pytest.raises(VolumeError, match="duplicate SOP Instance UID"):
        load_series(files + files[:1])


def test_mixed_series_is_refused() -> None:
    with pytest.raises(VolumeError, match="mixed input: 2 studies"):
        load_series(_files(LIDC2)[:3] + _files(CIP)[:3])


def test_two_series_of_one_study_are_refused(tmp_path: Path) -> None:
    other = generate_uid()

    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i % 2:
            ds.SeriesInstanceUID = other

    with pytest.raises(VolumeError, match="2 series"):
        load_series(_copy(tmp_path, _files(CIP)[:4], edit))


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image\n" * 20)
    with pytest.raises(VolumeError, match="notes.txt: not a DICOM file"):
        load_series(_files(CIP)[:3] + [junk])


def test_no_pixel_data_is_refused(tmp_path: Path) -> None:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            del ds.PixelData

    with pytest.raises(VolumeError, match="0001.dcm: no Pixel Data"):
        load_series(_copy(tmp_path, _files(CIP)[:3], edit))


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("Modality", "MR", "Modality is MR"),
        ("RescaleType", "OD", "Rescale Type OD is not HU"),
        ("PhotometricInterpretation", "PALETTE COLOR", "not monochrome"),
        ("GantryDetectorTilt", "12.5", "Gantry/Detector Tilt is 12.5"),
        ("PixelSpacing", [4.0, 4.0], "different pixel spacings"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 0, -1], "different orientations"),
    ],
)
def test_bad_header_is_refused(tmp_path: Path, keyword: str, value, reason: str) -> None:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        if i == 2:
            setattr(ds, keyword, value)

    with pytest.raises(VolumeError, match=reason):
        load_series(_copy(tmp_path, _files(CIP)[:4], edit))


def test_enhanced_ct_is_refused_as_not_supported(tmp_path: Path) -> None:
    def edit(i: int, ds: pydicom.Dataset) -> None:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
        ds.NumberOfFrames = 1

    with pytest.raises(VolumeError, match="Enhanced CT Image Storage.*not supported yet"):
        load_series(_copy(tmp_path, _files(CIP)[:2], edit))


def test_gantry_tilt_from_positions_is_refused(tmp_path: Path) -> None:
    files = _files(LIDC2)[:6]
    order = sorted(range(len(files)), key=lambda i: float(
        pydicom.dcmread(files[i], stop_before_pixels=True).ImagePositionPatient[2]))
    rank = {i: r for r, i in enumerate(order)}

    def edit(i: int, ds: pydicom.Dataset) -> None:  # 15 degrees: y shifts with z
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + rank[i] * 1.25 * np.tan(np.radians(15)), z]

    with pytest.raises(VolumeError, match=r"gantry tilt.*\(15\.00 degrees\)"):
        load_series(_copy(tmp_path, files, edit))


def test_totalsegmentator_jpeg2000_without_uids_gives_the_reason() -> None:
    with pytest.raises(VolumeError, match="Study Instance UID is missing or empty"):
        load_series(_files(TOTALSEG))


def test_totalsegmentator_jpeg2000_with_uids_loads(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()

    def edit(i: int, ds: pydicom.Dataset) -> None:  # headers only: pixel data stays JPEG 2000
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID

    loaded = load_series(_copy(tmp_path, _files(TOTALSEG), edit))
    assert loaded.transfer_syntax_uids == {JPEG2000Lossless}
    assert loaded.volume.hu.shape == (20, 512, 512)
    assert loaded.volume.spacing_mm[0] == pytest.approx(2.0, abs=1e-3)
    assert int(loaded.volume.hu.min()) == -1024  # air outside the body
    assert 1000 < int(loaded.volume.hu.max()) < 3072  # bone (PROVENANCE.md says 1470; decoded: 1839)
    assert -1024 <= float(np.median(loaded.volume.hu)) < -900


def test_corrupt_compressed_pixel_data_names_the_transfer_syntax(tmp_path: Path) -> None:
    study, series = generate_uid(), generate_uid()

    def edit(i: int, ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        if i == 1:
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])

    with pytest.raises(VolumeError, match=r"0001.dcm: pixel data cannot be decoded \(JPEG 2000"):
        load_series(_copy(tmp_path, _files(TOTALSEG)[:3], edit))


def _dcmtk(tool: str, args: list[str]):
    def convert(src: Path, dst: Path) -> None:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (dcmtk) is not installed")
        subprocess.run([tool, *args, str(src), str(dst)], check=True, capture_output=True)
    return convert


def _deflate(src: Path, dst: Path) -> None:
    ds = pydicom.dcmread(src)
    ds.save_as(dst, implicit_vr=False, little_endian=True)
    ds = pydicom.dcmread(dst)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)


def _j2k(src: Path, dst: Path) -> None:
    ds = pydicom.dcmread(src)
    ds.compress(JPEG2000Lossless)
    ds.save_as(dst)


@pytest.mark.parametrize(
    ("name", "convert", "syntax"),
    [
        ("jpeg-lossless", _dcmtk("dcmcjpeg", []), "1.2.840.10008.1.2.4.70"),
        ("jpeg-ls", _dcmtk("dcmcjpls", []), "1.2.840.10008.1.2.4.80"),
        ("rle", _dcmtk("dcmcrle", []), "1.2.840.10008.1.2.5"),
        ("deflated", _deflate, DeflatedExplicitVRLittleEndian),
        ("jpeg2000", _j2k, JPEG2000Lossless),
    ],
)
def test_compressed_copy_decodes_to_the_same_hu(tmp_path: Path, name, convert, syntax) -> None:
    files = _files(LIDC2)[:3]
    reference = load_series(files)
    copies = []
    for i, src in enumerate(files):
        dst = tmp_path / f"{name}-{i}.dcm"
        convert(src, dst)
        copies.append(dst)
    loaded = load_series(copies)
    assert loaded.transfer_syntax_uids == {syntax}
    np.testing.assert_array_equal(loaded.volume.hu, reference.volume.hu)
