"""The hilum: dense foci wrapped around the central bronchi are hilar vessels, not pneumonia.

The learned lung mask holds the pulmonary hila up to the mediastinum (the lobar and segmental
arteries and veins that run beside the bronchi, and hilar lymph nodes). In cross-section these
are round or branching soft-tissue structures in aerated lung, and COVID-Lesion Net calls many
of them consolidation. On the lesion-free and pneumonia series this was the largest single
source of false-positive lesion (looked at slice by slice on COVID-CT-MD normal002 and cap002:
the counted lesion of normal002 was almost all hilar vessels along the lower-lobe bronchi).

Rule (``hilar_components``): a 3-D lesion component (26-connectivity) is hilar, and is taken
out of the lesion mask, when both

- at least ``HILUM_FRACTION`` (60%) of its voxels lie in the *hilar zone*: lung within
  ``HILUM_RADIUS_MM`` (15 mm) of a *central bronchus*, an airway voxel whose lumen radius
  (distance to the airway wall) is at least ``HILUM_LUMEN_MM`` (2 mm: main, intermedius,
  lobar and segmental bronchi, whose arteries and veins are the hilar vessels); and
- its mean density is that of consolidation or vessel (at least ``HILUM_SOLID_HU``, -350 HU,
  the study's GGO / consolidation split): a ground-glass patch by the hilum stays.

A second rule (``vessel tree``, off by default: the node's ``analysis.hilar_vessel_trees``;
it failed its decision rule on sensitivity, see the plan named below) takes out what the first
cannot: the lesion model's mask wrapped around the segmental and subsegmental arteries, veins
and bronchial walls that run out from a hilum reaches well beyond 15 mm of the central bronchi
(on cap002 two such trees of 12 and 15 ml, 44% and 59% in the zone). A vessel is a tube, so a
component is also hilar when

- at least ``VESSEL_TREE_ZONE_FRACTION`` (20%) of its voxels lie in the hilar zone (it starts
  at the hilum), its mean density is at least ``HILUM_SOLID_HU``, and
- its dense part (voxels >= ``HILUM_SOLID_HU``) is nowhere thicker than the largest
  intrapulmonary artery beyond the hilum: the inscribed radius (Euclidean distance to the
  nearest voxel outside the dense part, with the voxel spacing) never exceeds
  ``VESSEL_MAX_RADIUS_MM`` (5 mm; lobar and segmental arteries are at most about 10 mm across).

Pneumonia that reaches the hilum from the lung (a lobar or segmental consolidation, a
confluent patch) extends well beyond 15 mm of the bronchi, so most of it lies outside the zone,
and its airless part is a filled airspace tens of millimetres thick, so the component stays
whole (vessel-tree plan, decision rule and figures:
segmentation/model_card/candidates/vessel_shape.plan.md). What the rules give up: a solid
pneumonic focus that lies mostly within 15 mm of a segmental or larger bronchus (peribronchial
consolidation of the central lung) is left out; COVID-19 is predominantly peripheral, so this
is rare for the disease the node scores, less so for bronchopneumonia. The parameters were set from anatomy (the size
of hilar vessels, the study's density split), not fitted to any figure; the model card says
what they do on the evaluation series.

The airway tree comes from segmentation.airways (traced by segmentation.lobes on its working
grid); without a tree (slices thicker than 3 mm, trachea not found) nothing is taken out and
the caller says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from segmentation.boxes import bounding_box

HILUM_LUMEN_MM = 2.0
HILUM_RADIUS_MM = 15.0
HILUM_FRACTION = 0.6
HILUM_SOLID_HU = -350.0
VESSEL_TREE_ZONE_FRACTION = 0.2
VESSEL_MAX_RADIUS_MM = 5.0


def hilar_zone(airway_mask: np.ndarray, spacing_mm: tuple[float, float, float],
               lumen_mm: float = HILUM_LUMEN_MM, radius_mm: float = HILUM_RADIUS_MM) -> np.ndarray:
    """Boolean zone within ``radius_mm`` of the airway voxels whose lumen radius is at least
    ``lumen_mm`` (same grid as ``airway_mask``; anisotropic spacing handled)."""
    airway = np.asarray(airway_mask, bool)
    zone = np.zeros(airway.shape, bool)
    # both transforms run in boxes: the lumen radius in the airway's box grown by one voxel
    # (its ring is background, nearer to any voxel inside than anything beyond it), the zone
    # in the central airway's box grown by the radius (nothing farther is within it)
    box = bounding_box(airway, margin=1)
    if box is None:
        return zone
    sub = airway[box]
    central = np.zeros(airway.shape, bool)
    central[box] = sub & (ndi.distance_transform_edt(sub, sampling=spacing_mm) >= lumen_mm)
    reach = np.ceil(radius_mm / np.asarray(spacing_mm, float)).astype(int) + 1
    box = bounding_box(central, margin=tuple(int(r) for r in reach))
    if box is None:
        return zone
    zone[box] = ndi.distance_transform_edt(~central[box], sampling=spacing_mm) <= radius_mm
    return zone


@dataclass(frozen=True)
class HilarResult:
    """The lesion mask without its hilar components, and what was taken out."""

    lesion: np.ndarray
    n_components: int
    removed_ml: float


def drop_hilar_components(hu: np.ndarray, lesion: np.ndarray, zone: np.ndarray,
                          spacing_mm: tuple[float, float, float],
                          fraction: float = HILUM_FRACTION,
                          solid_hu: float = HILUM_SOLID_HU,
                          tree_fraction: float | None = None,
                          tree_radius_mm: float = VESSEL_MAX_RADIUS_MM) -> HilarResult:
    """Remove from ``lesion`` each component with a mean HU >= ``solid_hu`` and either
    >= ``fraction`` of its voxels in ``zone``, or >= ``tree_fraction`` in it and a dense part
    (voxels >= ``solid_hu``) nowhere thicker than ``tree_radius_mm`` (a vessel tree; see the
    module docstring; off unless ``tree_fraction`` is given: the node's
    ``analysis.hilar_vessel_trees``). All arrays share one grid."""
    if not (hu.shape == lesion.shape == zone.shape):
        raise ValueError(f"hu {hu.shape}, lesion {lesion.shape} and zone {zone.shape} differ in shape")
    lesion = np.asarray(lesion, bool)
    if not lesion.any() or not zone.any():
        return HilarResult(lesion.copy(), 0, 0.0)
    box = bounding_box(lesion)
    sub = lesion[box]
    labels, n = ndi.label(sub, structure=np.ones((3, 3, 3), bool))
    ids = labels[sub]  # only the lesion voxels: the sums below never touch the rest
    size = np.bincount(ids, minlength=n + 1).astype(np.float64)
    in_zone = np.bincount(ids, weights=np.asarray(zone, bool)[box][sub], minlength=n + 1)
    hu_sum = np.bincount(ids, weights=np.asarray(hu)[box][sub].astype(np.float64), minlength=n + 1)
    safe = np.maximum(size, 1.0)
    solid = hu_sum / safe >= solid_hu
    hilar = (in_zone >= fraction * safe) & solid
    if tree_fraction is not None:
        hilar |= (in_zone >= tree_fraction * safe) & solid & (
            _dense_radius_mm(np.asarray(hu)[box], labels, n, solid_hu, spacing_mm) <= tree_radius_mm)
    hilar[0] = False
    out = lesion.copy()
    out[box] &= ~hilar[labels]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return HilarResult(out, int(hilar.sum()), float(size[hilar].sum()) * voxel_ml)



def _dense_radius_mm(hu: np.ndarray, labels: np.ndarray, n: int, solid_hu: float,
                     spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Per component label 0..n: the largest inscribed radius (mm) of its dense part (voxels
    >= ``solid_hu``), 0 where it has none. Components are separated by non-lesion voxels, so
    one distance transform of all dense parts gives each its own radius."""
    dense = (labels > 0) & (hu >= solid_hu)
    if not dense.any():
        return np.zeros(n + 1)
    # pad by one voxel: a dense part that touches the box border must not look infinite
    radius = ndi.distance_transform_edt(np.pad(dense, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    out = np.zeros(n + 1)
    np.maximum.at(out, labels[dense], radius[dense])
    return out
