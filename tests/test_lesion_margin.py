"""The one-voxel lesion margin (segmentation.lesion_margin): what joins the lesion and what
never does."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.lesion_margin import grow_margin


def _case():
    hu = np.full((5, 20, 20), -850.0, np.float32)      # aerated lung
    lung = np.zeros(hu.shape, bool)
    lung[:, 2:18, 2:18] = True
    lesion = np.zeros(hu.shape, bool)
    lesion[2, 8:12, 8:12] = True
    hu[1:4, 6:14, 6:14] = -600.0                         # the opacity is wider than the mask
    hu[lesion] = -600.0
    return hu, lesion, lung


def test_the_ground_glass_edge_joins_once_in_plane_and_across_slices():
    hu, lesion, lung = _case()
    grown = grow_margin(hu, lesion, lung)
    added = grown & ~lesion
    assert (grown & lesion).sum() == lesion.sum()
    # face neighbours only: 4 x 4 in-plane ring (16) + the squares above and below (2 x 16)
    assert added.sum() == 16 + 32
    assert added[2, 7, 8] and added[1, 9, 9] and added[3, 9, 9]
    assert not added[2, 7, 7]                          # a corner is not a face neighbour
    assert not grown[2, 6, 8]                          # one step only


def test_aerated_lung_soft_tissue_and_the_outside_of_the_lung_never_join():
    hu, lesion, lung = _case()
    hu[2, 7, 8:12] = -900.0                            # aerated
    hu[2, 12, 8:12] = 40.0                             # soft tissue (vessel, chest wall)
    lung[2, 8:12, 7] = False                           # outside the lung
    hu[2, 8:12, 7] = -600.0
    added = grow_margin(hu, lesion, lung) & ~lesion
    assert not added[2, 7, 8:12].any()
    assert not added[2, 12, 8:12].any()
    assert not added[2, 8:12, 7].any()
    assert added[2, 8:12, 12].all()                    # the remaining GGO side still joins


def test_2d_slices_and_empty_masks():
    hu, lesion, lung = _case()
    grown = grow_margin(hu[2], lesion[2], lung[2])
    assert (grown & ~lesion[2]).sum() == 16
    empty = np.zeros_like(lesion)
    assert not grow_margin(hu, empty, lung).any()
    with pytest.raises(ValueError, match="differ in shape"):
        grow_margin(hu, lesion[:2], lung)


def test_with_spacing_only_opacities_of_a_centimetre_or_more_grow():
    hu = np.full((12, 40, 60), -850.0, np.float32)
    lung = np.ones(hu.shape, bool)
    big = np.zeros(hu.shape, bool)
    big[2:10, 5:25, 5:25] = True                       # 8 x 20 x 20 mm = 3.2 ml
    small = np.zeros(hu.shape, bool)
    small[5:7, 10:13, 45:48] = True                    # 18 mm^3
    hu[1:11, 4:26, 4:26] = -600.0
    hu[4:8, 9:14, 44:49] = -600.0
    grown = grow_margin(hu, big | small, lung, (1.0, 1.0, 1.0))
    assert (grown & ~(big | small))[1, 10, 10] and (grown & ~(big | small))[5, 4, 10]
    assert not (grown & ~(big | small))[4:8, 9:14, 44:49].any()
    with pytest.raises(ValueError, match="does not match"):
        grow_margin(hu, big, lung, (1.0, 1.0))
