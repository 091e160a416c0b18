"""DICOM Segmentations (BINARY): one SEG series per group of non-overlapping segments.

Three groups (node.outputs.codes.SEG_GROUPS): lesions (GGO, consolidation), lungs (left,
right) and lobes (five, only when ``masks.lobes`` is set). Segments of one group never
overlap, so a viewer that holds a SEG as one labelmap (OHIF, cornerstone3D) keeps every
voxel; one SEG with overlapping lungs, lesions and lobes made OHIF split it into layers and
drop voxels.

Each SEG is aligned pixel for pixel with the source series and keeps every frame of the
source grid (``omit_empty_frames=False``): the masks (on the canonical LPS grid of
node.volume) are mapped back to the source stack with ``LoadedSeries.to_source``, so frame k
of segment s is source slice k in that slice's own pixel layout, its Derivation Image /
Source Image references that slice's SOP Instance UID, its Plane Position is that slice's
Image Position (Patient), whatever the series' orientation. Viewers that map frames by
position then need no gap logic (OHIF showed shifts with omitted empty frames elsewhere).
The frames are bit-packed and the file is written Deflated Explicit VR Little Endian
(``SEG_TRANSFER_SYNTAX``): a 133-slice 512x512 lesion SEG is about 8.7 MB uncompressed and
about 0.1 MB deflated.

UIDs are derived with ``derive_uid(source series UID, revision, software_version, "SEG",
group, ...)`` so that a resend after a crash replaces rather than duplicates.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.outputs.codes import LESIONS, LOBES, LUNGS, SegGroup, SegmentSpec
from node.outputs.header import patient_study_reference
from node.uids import derive_uid
from node.volume import LoadedSeries
from segmentation.types import Masks

logger = logging.getLogger(__name__)

MANUFACTURER = "lungnode project"
MODEL_NAME = "lungnode"
DEVICE_SERIAL_NUMBER = "lungnode"
CONTENT_LABEL = "LUNGNODE"
#: The transfer syntax SEG files are written in (see the module docstring).
SEG_TRANSFER_SYNTAX = DeflatedExplicitVRLittleEndian
#: Engines whose masks come from a trained network (Artificial Intelligence family).
AI_ENGINES = frozenset({"unet"})


def seg_uids(series: LoadedSeries, revision: int, software_version: str,
             group: str = "lesions") -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of one group's SEG for this series/revision/version."""
    parts = (series.series_instance_uid, revision, software_version, "SEG", group)
    return derive_uid(*parts, "series"), derive_uid(*parts, "instance")


def segment_tracking_uid(series: LoadedSeries, key: str) -> str:
    """Tracking UID of one segment; the SR uses the same one for its measurement group."""
    return derive_uid(series.series_instance_uid, "tracking", key)


def build_segs(
    series: LoadedSeries,
    masks: Masks,
    ggo: np.ndarray,
    consolidation: np.ndarray,
    *,
    series_numbers: dict[str, int],
    revision: int,
    software_version: str,
) -> dict[str, Dataset]:
    """The SEGs for ``series``: {"lesions": ..., "lungs": ..., "lobes": ...} (lobes only when
    ``masks.lobes`` is set). ``series_numbers`` maps each group name to its series number.

    All masks must be boolean (or 0/1) arrays with the volume's shape (z, y, x); GGO and
    consolidation must not overlap, nor left and right lung.
    """
    shape = series.volume.hu.shape
    for name, array in (("left lung", masks.lung_left), ("right lung", masks.lung_right),
                        ("ground glass opacity", ggo), ("consolidation", consolidation)):
        _check_mask(name, array, shape)
    out: dict[str, Dataset] = {}
    out["lesions"] = _build_group(series, LESIONS, _labels(LESIONS, (ggo, consolidation)),
                                  masks.engine, series_numbers, revision, software_version)
    out["lungs"] = _build_group(series, LUNGS, _labels(LUNGS, (masks.lung_left, masks.lung_right)),
                                masks.engine, series_numbers, revision, software_version)
    if masks.lobes is not None:
        _check_mask("lobes", masks.lobes, shape, label_map=True)
        lobes = np.asarray(masks.lobes)
        if lobes.min() < 0 or lobes.max() > len(LOBES.segments):
            raise ValueError(f"lobes label map holds values outside 0..{len(LOBES.segments)}")
        out["lobes"] = _build_group(series, LOBES, lobes.astype(np.uint8, copy=False),
                                    masks.engine, series_numbers, revision, software_version)
    return out


def build_seg(series: LoadedSeries, masks: Masks, ggo: np.ndarray, consolidation: np.ndarray,
              *, series_number: int, revision: int, software_version: str) -> Dataset:
    """The lesions SEG alone (GGO = segment 1, consolidation = segment 2)."""
    _check_mask("ground glass opacity", ggo, series.volume.hu.shape)
    _check_mask("consolidation", consolidation, series.volume.hu.shape)
    return _build_group(series, LESIONS, _labels(LESIONS, (ggo, consolidation)), masks.engine,
                        {"lesions": series_number}, revision, software_version)


def _labels(group: SegGroup, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    """One uint8 label map (0 = none, n = segment n) from disjoint boolean masks."""
    labels = np.zeros(arrays[0].shape, dtype=np.uint8)
    for spec, array in zip(group.segments, arrays):
        array = np.asarray(array, dtype=bool)
        if np.any(labels[array]):
            raise ValueError(f"{spec.label} overlaps another segment of the {group.name} SEG")
        labels[array] = spec.number
    return labels


def _build_group(series: LoadedSeries, group: SegGroup, labels: np.ndarray, engine: str,
                 series_numbers: dict[str, int], revision: int, software_version: str,
                 omit_empty_frames: bool = False) -> Dataset:
    if group.name not in series_numbers:
        raise ValueError(f"no series number for the {group.name} SEG")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"lungnode {engine}",
        family=(codes.cid7162.ArtificialIntelligence if engine in AI_ENGINES
                else codes.cid7162.MorphologicalOperations),
        version=software_version,
    )
    descriptions = [_description(series, spec, algorithm) for spec in group.segments]
    series_uid, sop_uid = seg_uids(series, revision, software_version, group.name)
    # the label map is on the canonical grid; the SEG's frames are the source stack's slices
    labels = np.ascontiguousarray(series.to_source(labels))
    seg = hd.seg.Segmentation(
        source_images=patient_study_reference(series.source_datasets),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_numbers[group.name],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software_version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=group.description[:64],
        content_label=CONTENT_LABEL,
        omit_empty_frames=omit_empty_frames,
    )
    seg.SeriesDescription = group.description
    logger.info("series %s: %s SEG %s with %d segments, %d frames", series.series_instance_uid,
                group.name, sop_uid, len(descriptions), int(seg.NumberOfFrames))
    return seg


def _check_mask(name: str, array: np.ndarray, shape: tuple[int, ...], label_map: bool = False) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} mask must be a numpy array, got {type(array).__name__}")
    if array.shape != shape:
        raise ValueError(f"{name} mask has shape {array.shape}, the volume is {shape}")
    if not label_map and array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} mask must be boolean, got {array.dtype}")


def _fresh(code) -> hd.sr.CodedConcept:
    """A new CodedConcept (highdicom stores the object itself; never mutate shared constants)."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme_designator,
                              meaning=code.meaning)


def _description(series: LoadedSeries, spec: SegmentSpec,
                 algorithm: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    description = hd.seg.SegmentDescription(
        segment_number=spec.number,
        segment_label=spec.label,
        segmented_property_category=_fresh(spec.category),
        segmented_property_type=_fresh(spec.property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=segment_tracking_uid(series, spec.key),
        tracking_id=spec.label,
        display_color=hd.color.CIELabColor.from_rgb(*spec.rgb),
    )
    if spec.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _fresh(spec.modifier)
        ]
    return description
