"""Hilar vessels are not lesions (segmentation.hilum): dense foci wrapped around the central
bronchi leave the lesion mask; pneumonia that reaches the hilum, ground glass beside it and
foci by small bronchi stay."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.hilum import (HILUM_RADIUS_MM, VESSEL_TREE_ZONE_FRACTION, drop_hilar_components,
                                hilar_zone)

SPACING = (2.0, 1.0, 1.0)
SHAPE = (40, 120, 120)


def _grid():
    z, y, x = np.indices(SHAPE)
    return z * SPACING[0], y * SPACING[1], x * SPACING[2]


def _bronchus(radius_mm: float, x0: float = 40.0, y0: float = 60.0) -> np.ndarray:
    """A cranio-caudal airway tube of the given lumen radius."""
    _, y, x = _grid()
    return (y - y0) ** 2 + (x - x0) ** 2 <= radius_mm ** 2


def _ring_vessel(x0: float = 40.0, y0: float = 60.0) -> np.ndarray:
    """An artery running beside the bronchus (5 mm from its axis, 3 mm radius)."""
    _, y, x = _grid()
    return (y - y0) ** 2 + (x - (x0 + 8.0)) ** 2 <= 3.0 ** 2


def test_zone_surrounds_central_bronchi_only() -> None:
    zone = hilar_zone(_bronchus(4.0), SPACING)
    _, y, x = _grid()
    r = np.hypot(y - 60.0, x - 40.0)
    assert zone[r <= HILUM_RADIUS_MM].all()
    assert not zone[r >= HILUM_RADIUS_MM + 6.0].any()
    # a bronchiole (lumen radius 1 mm) has no hilum
    assert not hilar_zone(_bronchus(1.0), SPACING).any()
    assert not hilar_zone(np.zeros(SHAPE, bool), SPACING).any()


def test_dense_vessel_beside_a_central_bronchus_is_removed() -> None:
    airway = _bronchus(4.0)
    vessel = _ring_vessel() & ~airway
    hu = np.full(SHAPE, -850.0)
    hu[vessel] = 30.0
    out = drop_hilar_components(hu, vessel, hilar_zone(airway, SPACING), SPACING)
    assert out.n_components == 1 and not out.lesion.any()
    assert out.removed_ml == pytest.approx(vessel.sum() * np.prod(SPACING) / 1000.0)


@pytest.mark.parametrize("half_width_mm, lateral_mm, tree_fraction", [
    (15.0, 100.0, None),   # from the bronchus 60 mm out: mostly outside the zone
    (15.0, 100.0, VESSEL_TREE_ZONE_FRACTION),   # the same with the vessel-tree rule
    (12.0, 76.0, VESSEL_TREE_ZONE_FRACTION),    # 24 mm thick, 30 mm out: a third in the zone, too thick for a vessel
])
def test_consolidation_reaching_the_hilum_from_the_lung_stays_whole(
        half_width_mm: float, lateral_mm: float, tree_fraction: float | None) -> None:
    from segmentation.hilum import HILUM_FRACTION

    airway = _bronchus(4.0)
    _, y, x = _grid()
    consolidation = (np.abs(y - 60.0) <= half_width_mm) & (x >= 46.0) & (x <= lateral_mm)
    hu = np.full(SHAPE, -850.0)
    hu[consolidation] = 20.0
    zone = hilar_zone(airway, SPACING)
    assert zone[consolidation].mean() < HILUM_FRACTION
    if tree_fraction is not None and lateral_mm < 80.0:
        assert zone[consolidation].mean() >= tree_fraction   # the tree rule is what decides
    out = drop_hilar_components(hu, consolidation, zone, SPACING, tree_fraction=tree_fraction)
    assert out.n_components == 0 and (out.lesion == consolidation).all()


def test_ground_glass_beside_the_bronchus_stays() -> None:
    airway = _bronchus(4.0)
    ggo = _ring_vessel() & ~airway
    hu = np.full(SHAPE, -850.0)
    hu[ggo] = -600.0
    out = drop_hilar_components(hu, ggo, hilar_zone(airway, SPACING), SPACING)
    assert out.n_components == 0 and (out.lesion == ggo).all()


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        drop_hilar_components(np.zeros(SHAPE), np.zeros(SHAPE, bool), np.zeros((2, 2, 2), bool), SPACING)


@pytest.mark.parametrize("edge", [False, True])
def test_hilar_zone_in_boxes_is_the_whole_grid_zone(edge):
    from scipy import ndimage as ndi

    from segmentation.hilum import HILUM_LUMEN_MM, HILUM_RADIUS_MM, hilar_zone

    spacing = (2.0, 1.0, 1.5)
    z, y, x = np.ogrid[:40, :90, :80]
    airway = ((y - 45) ** 2 + ((x - 40) * 1.5) ** 2 <= 36) & (z >= 10)      # a 6 mm trachea
    airway |= ((z * 2.0 - 30) ** 2 + (y - 45) ** 2 <= 9) & (x > 40)          # a 3 mm bronchus
    if edge:
        airway |= ((y - 5) ** 2 + (x * 1.5) ** 2 <= 16) & (z < 3)            # on two edges
    lumen = ndi.distance_transform_edt(airway, sampling=spacing)
    central = airway & (lumen >= HILUM_LUMEN_MM)
    expected = ndi.distance_transform_edt(~central, sampling=spacing) <= HILUM_RADIUS_MM
    np.testing.assert_array_equal(hilar_zone(airway, spacing), expected)
    assert not hilar_zone(np.zeros((5, 6, 7), bool), spacing).any()


TREE = VESSEL_TREE_ZONE_FRACTION   # the vessel-tree rule (analysis.hilar_vessel_trees)


def _vessel_tree_case(mask_radius_mm: float = 3.5):
    """A central bronchus and an artery that leaves the hilum laterally: a 3 mm thick vessel
    sheet (a row of cranio-caudal vessels, as the segmental branches fan out) from beside the
    bronchus 45 mm out into the lung, wrapped by a lesion mask a little wider than the vessel
    (as the lesion model draws it)."""
    airway = _bronchus(4.0)
    _, y, x = _grid()
    r = np.abs(y - 60.0)
    axis = (x >= 46.0) & (x <= 91.0)
    vessel = axis & (r <= 3.0)
    mask = axis & (r <= mask_radius_mm)
    hu = np.full(SHAPE, -850.0)
    hu[vessel] = 35.0
    return airway, hu, mask


def test_a_vessel_tree_leaving_the_hilum_is_removed_by_its_shape() -> None:
    from segmentation.hilum import HILUM_FRACTION

    airway, hu, vessel = _vessel_tree_case()
    zone = hilar_zone(airway, SPACING)
    in_zone = zone[vessel].mean()
    # outside the first rule's reach, inside the vessel-tree rule's
    assert VESSEL_TREE_ZONE_FRACTION <= in_zone < HILUM_FRACTION
    assert hu[vessel].mean() >= -350.0
    out = drop_hilar_components(hu, vessel, zone, SPACING, tree_fraction=TREE)
    assert out.n_components == 1 and not out.lesion.any()
    # the first rule alone (the default, analysis.hilar_vessel_trees: false) keeps it
    kept = drop_hilar_components(hu, vessel, zone, SPACING)
    assert kept.n_components == 0 and (kept.lesion == vessel).all()


def test_a_thin_dense_band_away_from_the_hilum_stays() -> None:
    airway = _bronchus(4.0)
    _, y, x = _grid()
    band = (np.abs(y - 60.0) <= 2.0) & (x >= 80.0) & (x <= 115.0)   # 35-75 mm from the bronchus
    hu = np.full(SHAPE, -850.0)
    hu[band] = 10.0
    out = drop_hilar_components(hu, band, hilar_zone(airway, SPACING), SPACING,
                                tree_fraction=TREE)
    assert out.n_components == 0 and (out.lesion == band).all()


def test_the_dense_part_decides_not_the_mask_around_it() -> None:
    """A vessel tree whose mask is drawn wide (8 mm around a 3 mm vessel) is still a tube:
    its dense part is thin; only the mean density can keep it (then it is ground glass)."""
    from segmentation.hilum import VESSEL_MAX_RADIUS_MM

    airway, hu, mask = _vessel_tree_case(mask_radius_mm=5.0)
    zone = hilar_zone(airway, SPACING)
    assert hu[mask].mean() >= -350.0
    out = drop_hilar_components(hu, mask, zone, SPACING, tree_fraction=TREE)
    assert out.n_components == 1
    # widened and filled dense out in the lung: thicker than a vessel, it stays
    hu_filled = hu.copy()
    thick_airway, thick_mask = airway, mask.copy()
    _, y, x = _grid()
    thick_mask |= (np.abs(y - 60.0) <= 8.0) & (x >= 46.0) & (x <= 76.0)
    hu_filled[thick_mask] = 35.0
    zone = hilar_zone(thick_airway, SPACING)
    assert zone[thick_mask].mean() >= 0.2   # the zone rule alone would not keep it
    assert 8.0 > VESSEL_MAX_RADIUS_MM       # the dense part's inscribed radius is 8-9 mm
    out = drop_hilar_components(hu_filled, thick_mask, zone, SPACING, tree_fraction=TREE)
    assert out.n_components == 0
