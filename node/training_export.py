"""A site's own labelled data for fine-tuning: CT series + DICOM-SEG -> NIfTI training pair.

``lungnode train --site-data DIR`` reads ``DIR/images/<name>.nii.gz`` with
``DIR/labels/<name>.nii.gz`` (labels 0 background, 1 GGO, 2 consolidation; or 0/1 lesion,
which the trainer splits by HU). This module makes such a pair from what a PACS holds: the CT
series (decoded and checked by node.volume, like every analysed series) and a DICOM-SEG that
references it. DICOM decoding stays in node/; segmentation/ only sees arrays.

Which segments hold the labels:
- by default, segments coded like lungnode's own SEG: GGO (DCM 112120) and consolidation
  (SCT 95436008), so a radiologist's correction of a lungnode SEG can be fed back;
- otherwise name them: ``ggo_segments`` and ``consolidation_segments`` (segment numbers),
  or ``lesion_segments`` for a binary lesion label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from node.outputs.codes import GROUND_GLASS_OPACITY, LUNG_CONSOLIDATION
from node.volume import LoadedSeries, VolumeError, load_series


class TrainingExportError(ValueError):
    """The CT and SEG cannot make a training pair (message says why)."""


@dataclass(frozen=True)
class TrainingPair:
    image_path: Path
    label_path: Path
    label_kind: str                 # "ggo/consolidation" | "lesion"
    voxels_per_label: dict[int, int]


def _segments_with_code(seg: hd.seg.Segmentation, code) -> list[int]:
    found = []
    for item in seg.SegmentSequence:
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        if (prop.CodeValue, prop.CodingSchemeDesignator) == (code.value, code.scheme_designator):
            found.append(int(item.SegmentNumber))
    return found


def _union(seg: hd.seg.Segmentation, series: LoadedSeries, numbers: Sequence[int]) -> np.ndarray:
    known = {int(item.SegmentNumber) for item in seg.SegmentSequence}
    missing = sorted(set(numbers) - known)
    if missing:
        raise TrainingExportError(f"the SEG has no segment(s) {missing} (it has {sorted(known)})")
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(series.sop_instance_uids),
            segment_numbers=list(numbers),
            assert_missing_frames_are_empty=True,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise TrainingExportError(f"the SEG does not line up with this CT series: {exc}") from exc
    # Frames come in source stack order and pixel layout; the CT volume is canonical LPS.
    return np.ascontiguousarray(series.to_canonical(pixels.any(axis=-1)))


def export_training_pair(
    ct_files: Sequence[Path],
    seg_file: Path,
    out_dir: Path,
    name: str,
    *,
    ggo_segments: Sequence[int] | None = None,
    consolidation_segments: Sequence[int] | None = None,
    lesion_segments: Sequence[int] | None = None,
) -> TrainingPair:
    try:
        series = load_series(ct_files)
    except VolumeError as exc:
        raise TrainingExportError(f"CT series: {exc}") from exc
    try:
        seg = hd.seg.segread(seg_file)
    except Exception as exc:  # pydicom/highdicom raise many types for a bad file
        raise TrainingExportError(f"{seg_file} is not a readable DICOM-SEG: {exc}") from exc
    if seg.StudyInstanceUID != series.study_instance_uid:
        raise TrainingExportError("the SEG belongs to another study than the CT series")

    if lesion_segments:
        label = _union(seg, series, lesion_segments).astype(np.uint8)
        kind = "lesion"
    else:
        ggo_numbers = list(ggo_segments or _segments_with_code(seg, GROUND_GLASS_OPACITY))
        cons_numbers = list(consolidation_segments or _segments_with_code(seg, LUNG_CONSOLIDATION))
        if not ggo_numbers and not cons_numbers:
            raise TrainingExportError(
                "no GGO (DCM 112120) or consolidation (SCT 95436008) segment in the SEG: "
                "name the segments (--ggo-segment/--consolidation-segment or --lesion-segment)"
            )
        label = np.zeros(series.volume.hu.shape, np.uint8)
        if ggo_numbers:
            label[_union(seg, series, ggo_numbers)] = 1
        if cons_numbers:
            label[_union(seg, series, cons_numbers)] = 2
        kind = "ggo/consolidation"

    images, labels = out_dir / "images", out_dir / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    spacing_xyz = tuple(float(s) for s in reversed(series.volume.spacing_mm))
    pair = []
    for array, folder in ((series.volume.hu.astype(np.int16), images), (label, labels)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing_xyz)
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(path), True)
        pair.append(path)
    counts = {int(v): int(n) for v, n in zip(*np.unique(label, return_counts=True)) if v}
    return TrainingPair(pair[0], pair[1], kind, counts)
