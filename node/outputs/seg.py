"""DICOM Segmentation (BINARY) of lungs, GGO, consolidation and (when present) lobes.

The SEG is aligned pixel for pixel with the source series: the masks (on the canonical LPS
grid of node.volume) are mapped back to the source stack with ``LoadedSeries.to_source``, so
frame k of segment s is source slice k in that slice's own pixel layout (its Derivation
Image / Source Image references that slice's SOP Instance UID, its Plane Position is that
slice's Image Position (Patient)), whatever the series' orientation. Frames without
any voxel are omitted (highdicom ``omit_empty_frames``). Segment numbers, labels and codes
come from :mod:`node.outputs.codes`.

UIDs are derived with ``derive_uid(source series UID, revision, software_version, "SEG",
...)`` so that a resend after a crash replaces rather than duplicates.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.outputs.codes import LOBE_SEGMENTS, LOBE_VALUE_BY_KEY, SEGMENTS, SegmentSpec
from node.uids import derive_uid
from node.volume import LoadedSeries
from segmentation.types import Masks

logger = logging.getLogger(__name__)

MANUFACTURER = "lungnode project"
MODEL_NAME = "lungnode"
DEVICE_SERIAL_NUMBER = "lungnode"
SERIES_DESCRIPTION = "Lung/GGO/consolidation (lungnode)"
CONTENT_LABEL = "LUNGNODE"
#: Engines whose masks come from a trained network (Artificial Intelligence family).
AI_ENGINES = frozenset({"unet"})


def seg_uids(series: LoadedSeries, revision: int, software_version: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG for this series/revision/version."""
    parts = (series.series_instance_uid, revision, software_version, "SEG")
    return derive_uid(*parts, "series"), derive_uid(*parts, "instance")


def segment_tracking_uid(series: LoadedSeries, key: str) -> str:
    """Tracking UID of one segment; the SR uses the same one for its measurement group."""
    return derive_uid(series.series_instance_uid, "tracking", key)


def build_seg(
    series: LoadedSeries,
    masks: Masks,
    ggo: np.ndarray,
    consolidation: np.ndarray,
    *,
    series_number: int,
    revision: int,
    software_version: str,
) -> Dataset:
    """Build the SEG for ``series`` from ``masks`` and the GGO / consolidation masks.

    All masks must be boolean (or 0/1) arrays with the volume's canonical shape (z, y, x);
    they are written on the source stack (``series.to_source``). Segments:
    1 left lung, 2 right lung, 3 ground-glass opacity, 4 consolidation, and 5-9 the lobes
    (left upper, left lower, right upper, right middle, right lower) when ``masks.lobes``
    is not None. Returns a highdicom Segmentation (a pydicom Dataset).
    """
    shape = series.volume.hu.shape
    arrays: list[tuple[SegmentSpec, np.ndarray]] = [
        (SEGMENTS[0], masks.lung_left),
        (SEGMENTS[1], masks.lung_right),
        (SEGMENTS[2], ggo),
        (SEGMENTS[3], consolidation),
    ]
    for spec, array in arrays:
        _check_mask(spec.label, array, shape)
    lobes = masks.lobes
    if lobes is not None:
        _check_mask("lobes", lobes, shape, label_map=True)
        lobes = series.to_source(lobes)
    arrays = [(spec, series.to_source(array)) for spec, array in arrays]
    shape = series.source_shape

    n_segments = len(arrays) + (len(LOBE_SEGMENTS) if lobes is not None else 0)
    # Only the slices that hold any segment go into the SEG (empty frames are omitted anyway);
    # building the frame stack for those alone keeps highdicom's working copies small.
    occupied = np.zeros(shape[0], dtype=bool)
    for _, array in arrays:
        occupied |= array.any(axis=(1, 2))
    if lobes is not None:
        occupied |= lobes.any(axis=(1, 2))
    slices = np.flatnonzero(occupied)
    if slices.size == 0:
        slices = np.array([0])  # an all-empty SEG still needs one (empty) source frame
    stacked = np.zeros((slices.size,) + shape[1:] + (n_segments,), dtype=bool)
    for i, (_, array) in enumerate(arrays):
        stacked[..., i] = array[slices]
    specs = [spec for spec, _ in arrays]
    if lobes is not None:
        for j, spec in enumerate(LOBE_SEGMENTS):
            np.equal(lobes[slices], LOBE_VALUE_BY_KEY[spec.key], out=stacked[..., len(arrays) + j])
            specs.append(spec)
    source_images = [series.source_datasets[i] for i in slices]

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"lungnode {masks.engine}",
        family=(codes.cid7162.ArtificialIntelligence if masks.engine in AI_ENGINES
                else codes.cid7162.MorphologicalOperations),
        version=software_version,
    )
    descriptions = [_description(series, spec, algorithm) for spec in specs]
    series_uid, sop_uid = seg_uids(series, revision, software_version)
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=software_version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_description=SERIES_DESCRIPTION,
        content_label=CONTENT_LABEL,
        omit_empty_frames=True,
    )
    del stacked
    seg.SeriesDescription = SERIES_DESCRIPTION
    logger.info("series %s: SEG %s with %d segments, %d frames",
                series.series_instance_uid, sop_uid, n_segments, int(seg.NumberOfFrames))
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
