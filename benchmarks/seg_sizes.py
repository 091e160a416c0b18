"""SEG file sizes for a real CT series and the masks `lungnode analyze` made for it: every
source frame vs empty frames omitted, Explicit VR Little Endian vs Deflated (the node writes
every frame, deflated).

    .venv/bin/lungnode analyze --engine threshold --out /tmp/lidc1 \
        ../shared/data/lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series
    .venv/bin/python benchmarks/seg_sizes.py \
        ../shared/data/lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series /tmp/lidc1
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from node.outputs import seg as segmod
from node.outputs.codes import SEG_GROUPS
from node.volume import load_series


def labels_of(path: Path, series) -> np.ndarray:
    """The label map (volume order) a SEG file holds."""
    seg = pydicom.dcmread(path)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    index = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    labels = np.zeros(series.volume.hu.shape, np.uint8)
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = index[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        labels[k][pixels[frame] > 0] = number
    return labels


def main(ct_folder: str, out_folder: str) -> None:
    series = load_series(sorted(p for p in Path(ct_folder).rglob("*.dcm")))
    hu = series.volume.hu
    print(f"series {hu.shape[0]} slices of {hu.shape[1]}x{hu.shape[2]}")
    for group in SEG_GROUPS:
        path = Path(out_folder) / group.filename
        if not path.exists():
            continue
        labels = labels_of(path, series)
        for omit in (False, True):
            started = time.perf_counter()
            seg = segmod._build_group(series, group, labels, "threshold", {group.name: 1}, 1,
                                      "bench", omit_empty_frames=omit)
            built = time.perf_counter() - started
            sizes = []
            for syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
                seg.file_meta.TransferSyntaxUID = syntax
                buffer = io.BytesIO()
                seg.save_as(buffer, enforce_file_format=True)
                sizes.append(len(buffer.getvalue()) / 1e6)
            print(f"{group.filename:14s} {'omitted' if omit else 'all    '} frames "
                  f"{int(seg.NumberOfFrames):4d}: explicit {sizes[0]:6.2f} MB, "
                  f"deflated {sizes[1]:5.2f} MB (built in {built:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
