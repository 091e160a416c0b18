"""Lung completion (segmentation.lung_completion): airless lung that the lung mask left out
comes back from the lesion model's components that touch the lung, to the side they touch;
what does not touch the lung, and the airways, stay out."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.lung_completion import complete_lungs

SPACING = (2.0, 1.0, 1.0)
SHAPE = (20, 60, 100)


def _box(z0, z1, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[z0:z1, y0:y1, x0:x1] = True
    return m


def _lungs():
    # aerated part of each lung: the anterior rows 10..35; the posterior rows 35..50 are airless
    right = _box(2, 18, 10, 35, 10, 40)
    left = _box(2, 18, 10, 35, 60, 90)
    return right, left


def test_dependent_consolidation_joins_its_own_side() -> None:
    right, left = _lungs()
    cons_r = _box(2, 18, 35, 50, 12, 38)  # touches the right lung's posterior border
    cons_l = _box(4, 16, 35, 48, 62, 88)
    done = complete_lungs(right, left, cons_r | cons_l, SPACING)
    assert done.n_components == 2
    assert done.right[cons_r].all() and not done.right[cons_l].any()
    assert done.left[cons_l].all() and not done.left[cons_r].any()
    assert not (done.right & done.left).any()
    expected_ml = (cons_r.sum() + cons_l.sum()) * np.prod(SPACING) / 1000.0
    assert done.added_ml == pytest.approx(expected_ml)


def test_a_component_that_does_not_touch_the_lung_stays_out() -> None:
    right, left = _lungs()
    apart = _box(5, 10, 52, 58, 45, 55)  # between the lungs, posterior, 17 rows from either
    done = complete_lungs(right, left, apart, SPACING)
    assert done.n_components == 0 and done.added_ml == 0.0
    assert np.array_equal(done.right, right) and np.array_equal(done.left, left)


def test_lesion_voxels_inside_the_lung_and_in_the_airways_add_nothing() -> None:
    right, left = _lungs()
    inside = _box(5, 10, 15, 25, 15, 25) & right
    airway = _box(0, 20, 35, 40, 20, 25)  # a bronchus just behind the right lung
    done = complete_lungs(right, left, inside | airway, SPACING, airway=airway)
    assert done.n_components == 0
    assert not done.right[airway].any()


def test_a_component_touching_both_lungs_is_split_to_the_nearer_side() -> None:
    right, left = _lungs()
    bridge = _box(6, 12, 35, 45, 10, 90)  # a posterior band under both lungs
    done = complete_lungs(right, left, bridge, SPACING)
    assert done.n_components == 1
    assert done.right[bridge].sum() + done.left[bridge].sum() == bridge.sum()
    assert not (done.right & done.left).any()
    assert done.right[6:12, 35:45, 10:40].all() and done.left[6:12, 35:45, 60:90].all()
    assert not done.left[6:12, 35:45, 10:49].any() and not done.right[6:12, 35:45, 51:90].any()


def test_shapes_must_agree() -> None:
    right, left = _lungs()
    with pytest.raises(ValueError, match="shape"):
        complete_lungs(right, left, np.zeros((2, 2, 2), bool), SPACING)


def test_min_contact_keeps_what_lies_against_the_lung_and_drops_what_only_grazes_it() -> None:
    right, left = _lungs()
    cons = _box(2, 18, 35, 50, 12, 38)  # its whole anterior face on the lung
    organ = _box(0, 3, 36, 58, 44, 58)  # a block under the lung bases that grazes a corner
    organ[2, 35, 40] = True  # touches the right lung at one voxel
    organ[2, 35, 41:44] = True
    loose = complete_lungs(right, left, cons | organ, SPACING)
    assert loose.right[organ].any()
    strict = complete_lungs(right, left, cons | organ, SPACING, min_contact=0.15)
    assert strict.n_components == 1
    assert strict.right[cons].all() and not strict.right[organ].any()



@pytest.fixture(scope="module")
def phantom_completion():
    """The phantom segmented by the default engines without and with lung completion (the
    opt-in path of analysis.lung_completion), and its truth labels."""
    from node.phantom import phantom_with_labels
    from segmentation.engine import segment

    volume, _, labels = phantom_with_labels(seed=0)
    plain = segment(volume, engine="unet", device="cpu", lung_completion=False)
    done = segment(volume, engine="unet", device="cpu", lung_completion=True)
    return volume, labels, plain, done


def test_engine_completion_grows_the_lungs_and_says_how_much(phantom_completion) -> None:
    import re

    volume, _, plain, done = phantom_completion
    for side in ("lung_left", "lung_right"):
        assert not (getattr(plain, side) & ~getattr(done, side)).any(), side
    assert not (done.lung_left & done.lung_right).any()
    added = (done.lung_left | done.lung_right) & ~(plain.lung_left | plain.lung_right)
    notes = [n for n in done.notes if n.startswith("lung completion:")]
    assert not [n for n in plain.notes if n.startswith("lung completion:")]
    assert added.any() and len(notes) == 1   # the phantom gets 46 ml (see the xfail below)
    ml = float(re.search(r"\((\d+) ml\)", notes[0]).group(1))
    assert ml == pytest.approx(added.sum() * volume.voxel_volume_ml, abs=1.0)


@pytest.mark.xfail(strict=True, reason="the shipped lesion model (v2) marks soft tissue beside the "
                   "phantom's lungs (one 33 ml component at 40 HU reaching 35 mm from the lung): "
                   "the completion adds 46 ml there, 1.6 ml of it lung; one reason "
                   "analysis.lung_completion is off by default (MODEL_CARD.md, 'Lung completion')")
def test_engine_completion_adds_only_lung_on_the_phantom(phantom_completion) -> None:
    volume, labels, plain, done = phantom_completion
    added = (done.lung_left | done.lung_right) & ~(plain.lung_left | plain.lung_right)
    assert (added & ~labels["lung"]).sum() * volume.voxel_volume_ml < 5.0
