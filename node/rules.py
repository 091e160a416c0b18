"""Which closed series to analyse: an axial, original chest CT with enough thin slices.

``evaluate_series`` looks only at headers (read without pixel data) and says why not when it
refuses; derived objects (SEG, SR, Secondary Capture: ours or others', routed back by the
PACS) are never analysed, so an auto-routing loop cannot make the node spin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from node.config import SelectionSettings

ANALYSABLE_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")
DERIVED_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # Segmentation and other raw/derived objects
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured reports
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture, incl. multi-frame
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
    for h in headers:
        image_type = set(_values(h.get("ImageType")))
        excluded = image_type & {t.upper() for t in selection.excluded_image_type}
        if excluded:
            return Selection(False, f"ImageType contains {', '.join(sorted(excluded))}")
        missing = {t.upper() for t in selection.required_image_type} - image_type
        if missing and "1.2.840.10008.5.1.4.1.1.2.1" != str(h.get("SOPClassUID", "")):
            return Selection(False, f"ImageType lacks {', '.join(sorted(missing))}")
    thickness = [h.get("SliceThickness") for h in headers if h.get("SliceThickness") not in (None, "")]
    if not thickness:
        return Selection(False, "SliceThickness missing")
    thickest = max(float(t) for t in thickness)
    if thickest > selection.max_slice_thickness_mm:
        return Selection(
            False, f"slice thickness {thickest:g} mm > {selection.max_slice_thickness_mm:g} mm"
        )
    slices = sum(int(h.get("NumberOfFrames", 1) or 1) for h in headers)
    if slices < selection.min_slices:
        return Selection(False, f"{slices} slices < {selection.min_slices}")
    return Selection(True, f"axial CT, {slices} slices of <= {thickest:g} mm")
