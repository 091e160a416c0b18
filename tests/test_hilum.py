"""Hilar vessels are not lesions (segmentation.hilum): dense foci wrapped around the central
bronchi leave the lesion mask; pneumonia that reaches the hilum, ground glass beside it and
foci by small bronchi stay."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.hilum import HILUM_RADIUS_MM, drop_hilar_components, hilar_zone

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


def test_consolidation_reaching_the_hilum_from_the_lung_stays_whole() -> None:
    airway = _bronchus(4.0)
    _, y, x = _grid()
    # a segmental consolidation from the bronchus out to 60 mm lateral: mostly outside the zone
    consolidation = (np.abs(y - 60.0) <= 15.0) & (x >= 46.0) & (x <= 100.0)
    hu = np.full(SHAPE, -850.0)
    hu[consolidation] = 20.0
    out = drop_hilar_components(hu, consolidation, hilar_zone(airway, SPACING), SPACING)
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
