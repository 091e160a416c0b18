"""Typed quality flags: when the measurements should not be trusted as they are.

Each flag is a :class:`QualityFinding` with a :class:`QualityCode` (a stable string enum, the
contract in measurements.json ``quality_findings[].code`` and in the SR's quality remarks),
the region it concerns, the measured value and the threshold that raised it.

Codes and rules (per lung; thresholds are module constants):

* ``dense_lung``: more than ``DENSE_FRACTION`` (50 %) of a lung's mask is at or above the
  consolidation threshold (-350 HU). Aerated lung has 5-10 % of such voxels (vessels,
  bronchial walls); above half, the lung is mostly consolidated ("white lung") and its
  boundary against chest wall, effusion and mediastinum (all of the same density) is the
  least reliable part of the whole analysis.
* ``lung_lesion_disagreement``: the lung mask and the lesion mask disagree. The lesion
  mask is clipped to the lung, so where they disagree the lung boundary runs *through*
  lesion: more than ``BORDER_LESION_FRACTION`` (15 %) of a lung's surface voxels are lesion
  voxels. A lung surface normally lies on aerated lung against the pleura; where lesion
  meets the mask edge over a large part of it, the mask cannot be checked against air and
  may have cut the lesion short (dense disease at the chest wall or in the dependent lung).
* ``small_lung_for_body``: the lung is much smaller than the body size predicts. The body's
  size is its volume over the lung's slices (per axial slice the largest 2-D component above
  -500 HU, holes filled: the trunk's cross-section, without couch or separate arms). On the
  lesion-free series here (LIDC-IDRI-0001, normal002, CIP ct-64) the lungs fill 0.24-0.34 of
  it (``EXPECTED_LUNG_FRACTION`` = 0.26, their median-ish; body fat is what varies most). A
  lung is flagged when it is below ``SMALL_LUNG_RATIO`` (0.6) of its expected share
  (``LEFT_SHARE`` 0.45 of the expected lung volume for the left lung, 0.55 for the right), so
  an obese but normal chest (ratio 0.24 -> 0.92 of expected) is not flagged, while a lung with
  more than ~40 % of its volume missing from the mask (dense disease carved out, atelectasis,
  effusion compressing it, a resected lobe) is. The bony thorax was tried as the predictor
  and rejected: at 4 mm voxels the ribs wash out below +200 HU (ratio 0.84 vs 0.29).
* ``fluid_in_lung``: the lung mask holds a homogeneous body of fluid density: the largest
  connected region of the mask whose HU, smoothed in-plane (Gaussian, ``FLUID_SMOOTH_MM``
  1.5 mm), lies in ``FLUID_HU`` (-10..+30 HU) is at least ``FLUID_MIN_ML`` (50 ml). That is
  either pleural effusion taken as lung (the learned lungs of 2026-12-02 take part of a
  layering effusion: +13 % on the painted test case) or airless consolidation; on non-contrast
  CT the two have the same density, so the flag says both, and the value is how much the
  lung volume is over if it is fluid. Healthy lungs hold 0-3 ml of it (LIDC-IDRI-0001,
  normal002, P002, cap002, CIP ct-64); with the shipped lungs on LIDC-IDRI-0001 painted: the
  effusion case 246 ml (331 ml of fluid in the mask), the issue's layer 235 ml, a white right
  lung 143 ml.

Per series (region ``lungs``):

* ``thick_slices``: the slices are more than ``THICK_SLICE_MM`` (3 mm, the lobe stage's limit
  for tracing the airway tree, segmentation.lobes.MAX_AIRWAY_SLICE_MM) apart. Then the lobes
  come from the geometric model, the hilar vessels are not told apart from lesion (the hilar
  zone comes from the tree) and a nodule spans too few slices for its shape to be read, so the
  lobe scores and the CT score are likely too high (benchmarks/slice_spacing.py: lesion-free
  LIDC-IDRI-0001 averaged to 5 mm scores 3, as stored at 2.5 mm 1; COVID-CT-MD averaged to
  4 mm: slice specificity 0.688 against 0.799 at 2 mm, pneumonia components). The value is
  the slice spacing.
* ``high_noise``: the aerated lung's high-frequency noise (segmentation.harmonize
  .lung_noise_hu) is above ``NOISE_REFERENCE_HU`` (30 HU; every series the networks were made
  and checked on, all soft or standard kernels, measures 13.5-26.3 HU): a sharp, lung-kernel
  reconstruction or a low-dose scan (the flag measures the noise, not its cause). On the same
  scans simulated as sharp kernels (benchmarks/sharp_kernel.py) the lesion network calls the
  edge-enhanced vessels consolidation and lesion-free lungs score 1-3 points high (less with
  ``analysis.harmonize_kernel``). The value is the noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage as ndi

from segmentation.boxes import bounding_box
from segmentation.harmonize import NOISE_REFERENCE_HU, lung_noise_hu
from segmentation.lobes import MAX_AIRWAY_SLICE_MM

DENSE_FRACTION = 0.5
BORDER_LESION_FRACTION = 0.15
BODY_MIN_HU = -500.0
EXPECTED_LUNG_FRACTION = 0.26
SMALL_LUNG_RATIO = 0.6
LEFT_SHARE = 0.45
FLUID_HU = (-10.0, 30.0)
FLUID_SMOOTH_MM = 1.5
FLUID_MIN_ML = 50.0
THICK_SLICE_MM = MAX_AIRWAY_SLICE_MM
#: In-plane step (mm) of the grid the body cross-section is measured on.
BODY_GRID_MM = 3.0


class QualityCode(str, Enum):
    DENSE_LUNG = "dense_lung"
    LUNG_LESION_DISAGREEMENT = "lung_lesion_disagreement"
    SMALL_LUNG_FOR_BODY = "small_lung_for_body"
    FLUID_IN_LUNG = "fluid_in_lung"
    THICK_SLICES = "thick_slices"
    HIGH_NOISE = "high_noise"


@dataclass(frozen=True)
class QualityFinding:
    code: QualityCode
    region: str            # "left_lung" | "right_lung" | "lungs" (the whole series)
    value: float
    threshold: float
    message: str

    def to_json_dict(self) -> dict:
        return {"code": self.code.value, "region": self.region, "value": self.value,
                "threshold": self.threshold, "message": self.message}


def body_volume_ml(hu: np.ndarray, lung: np.ndarray, spacing_mm) -> float:
    """Volume of the body over the lung's slices (see the module docstring)."""
    dz, dy, dx = spacing_mm
    sy = max(1, int(round(BODY_GRID_MM / dy)))
    sx = max(1, int(round(BODY_GRID_MM / dx)))
    pixels = 0
    for z in np.flatnonzero(lung.any(axis=(1, 2))):
        labels, n = ndi.label(hu[z, ::sy, ::sx] > BODY_MIN_HU)
        if n == 0:
            continue
        largest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        pixels += int(np.count_nonzero(ndi.binary_fill_holes(largest)))
    return pixels * sy * dy * sx * dx * dz / 1000.0


def largest_fluid_ml(hu: np.ndarray, masks: dict[str, np.ndarray], spacing_mm) -> dict[str, float]:
    """Per mask (e.g. {"left_lung": ..., "right_lung": ...}) the volume (ml) of its largest
    connected region at fluid density (see the module docstring). The smoothing runs once,
    inside the bounding box of all masks."""
    union = np.zeros(hu.shape, bool)
    for mask in masks.values():
        union |= mask
    out = {name: 0.0 for name in masks}
    if not union.any():
        return out
    box = []
    for axes in ((1, 2), (0, 2), (0, 1)):
        idx = np.flatnonzero(union.any(axis=axes))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    box = tuple(box)
    # 2 x 2 block means in-plane first (the smoothing is wider than that), then the Gaussian
    sub = hu[box]
    ny, nx = (sub.shape[1] // 2) * 2, (sub.shape[2] // 2) * 2
    if ny >= 2 and nx >= 2:
        sub = (sub[:, 0:ny:2, 0:nx:2].astype(np.float32) + sub[:, 1:ny:2, 0:nx:2]
               + sub[:, 0:ny:2, 1:nx:2] + sub[:, 1:ny:2, 1:nx:2]) / 4.0
        step = 2
    else:
        sub = sub.astype(np.float32)
        step = 1
    _dz, dy, dx = spacing_mm
    smooth = ndi.gaussian_filter(sub, (0, FLUID_SMOOTH_MM / (dy * step), FLUID_SMOOTH_MM / (dx * step)))
    band = (smooth >= FLUID_HU[0]) & (smooth <= FLUID_HU[1])
    cell_ml = float(np.prod(spacing_mm)) * step * step / 1000.0
    for name, mask in masks.items():
        m = mask[box]
        if step == 2:
            # a cell belongs to the mask when at least two of its 4 voxels do
            m = (m[:, 0:ny:2, 0:nx:2].astype(np.uint8) + m[:, 1:ny:2, 0:nx:2]
                 + m[:, 0:ny:2, 1:nx:2] + m[:, 1:ny:2, 1:nx:2]) >= 2
        labels, n = ndi.label(band & m)
        if n:
            out[name] = float(np.bincount(labels.ravel())[1:].max()) * cell_ml
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a 6-neighbour outside the mask (or on the array's edge); worked in the
    mask's bounding box grown by one voxel (the same voxels as on the whole grid)."""
    out = np.zeros(mask.shape, bool)
    box = bounding_box(mask, margin=1)
    if box is None:
        return out
    sub = mask[box]
    out[box] = sub & ~ndi.binary_erosion(sub, border_value=0)
    return out


def assess(hu: np.ndarray, lung_left: np.ndarray, lung_right: np.ndarray, lesion: np.ndarray,
           spacing_mm, consolidation_min_hu: float = -350.0) -> list[QualityFinding]:
    """All quality findings of one analysis (empty when nothing is wrong)."""
    findings: list[QualityFinding] = []
    lung = lung_left | lung_right
    has_lung = bool(lung.any())
    slice_mm = float(spacing_mm[0])
    if slice_mm > THICK_SLICE_MM and has_lung:
        findings.append(QualityFinding(
            QualityCode.THICK_SLICES, "lungs", round(slice_mm, 2), THICK_SLICE_MM,
            f"slices {slice_mm:.1f} mm apart (> {THICK_SLICE_MM:g} mm): lobes from the geometric "
            "model, hilar vessels not told apart from lesion, nodule shapes unreadable; lobe "
            "scores and the CT score are likely too high (a thinner reconstruction of the same "
            "scan, if there is one, gives the reliable figures)"))
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    noise = lung_noise_hu(hu, lung) if has_lung else None
    if noise is not None and noise > NOISE_REFERENCE_HU:
        findings.append(QualityFinding(
            QualityCode.HIGH_NOISE, "lungs", round(noise, 1), NOISE_REFERENCE_HU,
            f"aerated-lung noise {noise:.0f} HU (> {NOISE_REFERENCE_HU:g} HU, the noisiest series "
            "the lesion model was made on): a sharp reconstruction kernel or a low dose; vessels "
            "and noise may be called lesion and the scores may be too high (a soft-kernel "
            "reconstruction of the same scan, if there is one, gives the reliable figures)"))
    body_ml = body_volume_ml(hu, lung, spacing_mm) if has_lung else 0.0
    expected_lung_ml = EXPECTED_LUNG_FRACTION * body_ml
    fluid = largest_fluid_ml(hu, {"left_lung": lung_left, "right_lung": lung_right}, spacing_mm)
    for region, mask, share in (("left_lung", lung_left, LEFT_SHARE),
                                ("right_lung", lung_right, 1.0 - LEFT_SHARE)):
        n = int(np.count_nonzero(mask))
        side = region.replace("_", " ")
        if n == 0:
            continue
        dense = float(np.count_nonzero(mask & (hu >= consolidation_min_hu))) / n
        if dense > DENSE_FRACTION:
            findings.append(QualityFinding(
                QualityCode.DENSE_LUNG, region, round(100 * dense, 1), 100 * DENSE_FRACTION,
                f"{side}: {100 * dense:.0f}% of the lung is dense (>= {consolidation_min_hu:g} HU); "
                "its boundary against chest wall and effusion is uncertain"))
        surface = _surface(mask)
        n_surface = int(np.count_nonzero(surface))
        border = float(np.count_nonzero(surface & lesion)) / max(1, n_surface)
        if border > BORDER_LESION_FRACTION:
            findings.append(QualityFinding(
                QualityCode.LUNG_LESION_DISAGREEMENT, region, round(100 * border, 1),
                100 * BORDER_LESION_FRACTION,
                f"{side}: the lung boundary runs through lesion over {100 * border:.0f}% of its "
                "surface; the lung mask may cut the lesion short"))
        expected = share * expected_lung_ml
        volume = n * voxel_ml
        if expected > 0 and volume < SMALL_LUNG_RATIO * expected:
            findings.append(QualityFinding(
                QualityCode.SMALL_LUNG_FOR_BODY, region, round(volume / expected, 3),
                SMALL_LUNG_RATIO,
                f"{side}: {volume:.0f} ml is {100 * volume / expected:.0f}% of the {expected:.0f} ml "
                "the body size predicts; dense lung may be missing from the mask"))
        fluid_ml = fluid[region]
        if fluid_ml >= FLUID_MIN_ML:
            findings.append(QualityFinding(
                QualityCode.FLUID_IN_LUNG, region, round(fluid_ml, 1), FLUID_MIN_ML,
                f"{side}: the lung mask holds {fluid_ml:.0f} ml of homogeneous fluid density "
                f"({FLUID_HU[0]:g}..{FLUID_HU[1]:+g} HU): pleural effusion taken as lung, or airless "
                f"consolidation; if it is effusion the lung volume is over by up to {fluid_ml:.0f} ml"))
    return findings
