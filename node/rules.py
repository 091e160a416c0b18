"""Which closed series to analyse: an axial, original chest CT reconstruction with enough slices.

``evaluate_series`` looks only at headers (read without pixel data) and says why not when it
refuses. The rules, in order (the README lists them for sites):

1. Derived objects (SEG, SR, Secondary Capture: ours or others', routed back by the PACS) are
   stored and never analysed, so an auto-routing loop cannot make the node spin.
2. CT Image Storage or Enhanced CT Image Storage only, with a modality in
   ``selection.modalities``.
3. ImageType (or FrameType for Enhanced CT):
   - any value in ``selection.excluded_image_type`` refuses the series (localizers, scouts,
     MIP/MinIP and other projections, curved reformats);
   - value 1 must be ORIGINAL. A DERIVED axial reconstruction (e.g. an averaged axial slab,
     DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE) is analysed only where the site sets
     ``selection.accept_derived_axial``; derived reformats in other planes never are;
   - value 2 may be PRIMARY or SECONDARY (GE thin-slice chest CT is ORIGINAL\\SECONDARY\\AXIAL),
     value 3 and later are vendor-specific (AXIAL, HELIX, CT_SOM5 SPI...) and not required;
   - every value in ``selection.required_image_type`` (empty by default) must be present.
4. Geometry: every image's slice normal (the cross product of ImageOrientationPatient) must be
   within ``selection.max_tilt_from_axial_deg`` of the patient's head-foot axis, so coronal and
   sagittal reformats are refused whatever their ImageType says; the series must have at least
   ``selection.min_slices`` distinct slice positions (a localizer or a repeated single position
   is not a volume).
5. SliceThickness present and at most ``selection.max_slice_thickness_mm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from node.config import SelectionSettings

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ANALYSABLE_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
DERIVED_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # Segmentation and other raw/derived objects
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured reports
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture, incl. multi-frame
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated PDF/CDA
)
DERIVED_REASON = "derived object, stored only"


@dataclass(frozen=True)
class Selection:
    selected: bool
    reason: str


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    return [str(v).strip().upper() for v in value]


def _first_item(ds, keyword: str):
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _image_type(header) -> list[str]:
    """ImageType, or for Enhanced CT the shared FrameType when it says more."""
    values = _values(header.get("ImageType"))
    shared = _first_item(header, "SharedFunctionalGroupsSequence")
    frame_type = _first_item(shared, "CTImageFrameTypeSequence") if shared is not None else None
    if frame_type is not None and frame_type.get("FrameType"):
        values = values + [v for v in _values(frame_type.FrameType) if v not in values]
    return values


def _orientations(header) -> list[list[float]]:
    """ImageOrientationPatient of the image, or of each frame group of an Enhanced CT."""
    iop = header.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        return [[float(v) for v in iop]]
    found = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in header.get(keyword) or []:
            plane = _first_item(group, "PlaneOrientationSequence")
            if plane is not None and plane.get("ImageOrientationPatient") is not None:
                found.append([float(v) for v in plane.ImageOrientationPatient])
    return found


def _positions(header) -> list[tuple[float, ...]]:
    ipp = header.get("ImagePositionPatient")
    if ipp is not None and len(ipp) == 3:
        return [tuple(round(float(v), 2) for v in ipp)]
    found = []
    for group in header.get("PerFrameFunctionalGroupsSequence") or []:
        plane = _first_item(group, "PlanePositionSequence")
        if plane is not None and plane.get("ImagePositionPatient") is not None:
            found.append(tuple(round(float(v), 2) for v in plane.ImagePositionPatient))
    return found


def tilt_from_axial_deg(iop: Sequence[float]) -> float:
    """Angle in degrees between the slice normal of ``iop`` and the patient's head-foot axis."""
    r, c = iop[:3], iop[3:]
    normal = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in normal))
    if norm < 1e-6:
        return 90.0
    return math.degrees(math.acos(min(1.0, abs(normal[2]) / norm)))


def _image_type_refusal(image_type: list[str], selection: SelectionSettings) -> str | None:
    excluded = set(image_type) & {t.upper() for t in selection.excluded_image_type}
    if excluded:
        return f"ImageType contains {', '.join(sorted(excluded))}"
    shown = "\\".join(image_type) or "(empty)"
    if not image_type or image_type[0] not in ("ORIGINAL", "DERIVED"):
        return f"ImageType {shown}: value 1 is neither ORIGINAL nor DERIVED"
    if image_type[0] == "DERIVED" and not selection.accept_derived_axial:
        return (f"derived reconstruction (ImageType {shown}); set selection.accept_derived_axial "
                "to analyse derived axial series")
    missing = {t.upper() for t in selection.required_image_type} - set(image_type)
    if missing:
        return f"ImageType {shown} lacks {', '.join(sorted(missing))}"
    return None


def evaluate_series(headers: Sequence, selection: SelectionSettings) -> Selection:
    """Decide on a series from its instances' headers (pydicom Datasets)."""
    if not headers:
        return Selection(False, "no instances")
    sop_classes = {str(h.get("SOPClassUID", "")) for h in headers}
    if any(c.startswith(DERIVED_SOP_CLASS_PREFIXES) for c in sop_classes):
        return Selection(False, DERIVED_REASON)
    if not sop_classes <= set(ANALYSABLE_SOP_CLASSES):
        return Selection(False, f"SOP class {', '.join(sorted(sop_classes))} is not CT")
    modalities = {str(h.get("Modality", "")).upper() for h in headers}
    allowed = {m.upper() for m in selection.modalities}
    if not modalities <= allowed:
        return Selection(False, f"modality {', '.join(sorted(modalities))} not in {sorted(allowed)}")
    positions: set[tuple[float, ...]] = set()
    worst_tilt = 0.0
    for h in headers:
        refusal = _image_type_refusal(_image_type(h), selection)
        if refusal:
            return Selection(False, refusal)
        orientations = _orientations(h)
        if not orientations:
            return Selection(False, "ImageOrientationPatient missing: geometry unknown")
        worst_tilt = max([worst_tilt] + [tilt_from_axial_deg(o) for o in orientations])
        positions.update(_positions(h))
    if worst_tilt > selection.max_tilt_from_axial_deg:
        plane = "coronal or sagittal" if worst_tilt > 60 else "oblique"
        return Selection(False, f"not axial: slice normal {worst_tilt:.0f} deg from the head-foot "
                                f"axis (a {plane} reconstruction; limit "
                                f"{selection.max_tilt_from_axial_deg:g} deg)")
    thickness = [h.get("SliceThickness") for h in headers if h.get("SliceThickness") not in (None, "")]
    if not thickness:
        for h in headers:
            shared = _first_item(h, "SharedFunctionalGroupsSequence")
            measures = _first_item(shared, "PixelMeasuresSequence") if shared is not None else None
            if measures is not None and measures.get("SliceThickness") not in (None, ""):
                thickness.append(measures.SliceThickness)
    if not thickness:
        return Selection(False, "SliceThickness missing")
    thickest = max(float(t) for t in thickness)
    if thickest > selection.max_slice_thickness_mm:
        return Selection(
            False, f"slice thickness {thickest:g} mm > {selection.max_slice_thickness_mm:g} mm"
        )
    slices = len(positions)
    if slices < selection.min_slices:
        return Selection(False, f"{slices} distinct slice positions < {selection.min_slices}")
    return Selection(True, f"axial CT, {slices} slices of <= {thickest:g} mm")
