"""A second reader of what `lungnode analyze` writes: dcmqi's segimage2itkimage (the DICOM-SEG
converter 3D Slicer's QuantitativeReporting uses; PyPI ``dcmqi``) converts each SEG to NRRD
with the same voxel count per segment as the file holds and our measurements.json reports;
highdicom reads the SR and finds each measurement group's segment in the SEG it names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from analysed_ct import analyse_cip_ct64

SEGIMAGE2ITKIMAGE = shutil.which("segimage2itkimage") or str(
    Path(sys.executable).parent / "segimage2itkimage")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    return analyse_cip_ct64(tmp_path_factory)[1]


def _segment_voxels(path: Path) -> dict[int, int]:
    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
    counts: dict[int, int] = {}
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] = counts.get(number, 0) + int(np.count_nonzero(pixels[frame]))
    return counts


@pytest.mark.parametrize("name", ["seg.dcm", "seg_lungs.dcm", "seg_lobes.dcm"])
def test_dcmqi_reads_every_seg(analysed, tmp_path, name) -> None:
    if not Path(SEGIMAGE2ITKIMAGE).exists():
        pytest.fail("dcmqi's segimage2itkimage is not installed (pip install -e '.[test]')")
    path = analysed / name
    if name == "seg_lobes.dcm" and not path.exists():
        pytest.skip("no lobes for this series")
    proc = subprocess.run([SEGIMAGE2ITKIMAGE, "--inputDICOM", str(path), "--outputDirectory",
                           str(tmp_path), "--prefix", "s", "--outputType", "nrrd"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = json.loads((tmp_path / "s-meta.json").read_text())
    counts: dict[int, int] = {}
    for index, group in enumerate(meta["segmentAttributes"], start=1):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"s-{index}.nrrd")))
        for attributes in group:
            counts[int(attributes["labelID"])] = int(np.count_nonzero(
                image == int(attributes["labelID"])))
    assert counts == _segment_voxels(path)
    measurements = json.loads((analysed / "measurements.json").read_text())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    first = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    voxel_ml = float(first.PixelSpacing[0]) * float(first.PixelSpacing[1]) * float(
        first.SliceThickness) / 1000.0
    ours = {"seg.dcm": [measurements["ggo_volume_ml"], measurements["consolidation_volume_ml"]],
            "seg_lungs.dcm": [measurements["regions"]["left_lung"]["volume_ml"],
                              measurements["regions"]["right_lung"]["volume_ml"]],
            "seg_lobes.dcm": [measurements["lobes"][k]["volume_ml"] for k in (
                "left_upper", "left_lower", "right_upper", "right_middle", "right_lower")]
            if measurements.get("lobes") else []}[name]
    for number, volume in enumerate(ours, start=1):
        assert counts[number] * voxel_ml == pytest.approx(volume, rel=2e-3), (name, number)


def test_highdicom_reads_the_sr_and_its_segments(analysed) -> None:
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(analysed / "sr.dcm"))
    segs = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
            for p in analysed.glob("seg*.dcm")}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) >= 4
    for group in groups:
        ref = group.referenced_segment
        assert ref is not None
        uid = ref.referenced_sop_instance_uid
        (number,) = ref.referenced_segment_numbers
        assert uid in segs, "the SR references a SEG that analyze did not write"
        seg = pydicom.dcmread(segs[uid], stop_before_pixels=True)
        label = next(s.SegmentLabel for s in seg.SegmentSequence if int(s.SegmentNumber) == number)
        assert label == group.tracking_identifier
