"""The lung disease painter: painted disease stays lung, effusion leaves it, HU as described."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.lung_synth import PATTERNS, paint_dependent_consolidation, paint_disease

SP = (2.5, 1.5, 1.5)


def _host(nz=3):
    """Two elliptical 'lungs' (-850 HU) in soft tissue; right lung at low column index."""
    rng = np.random.default_rng(0)
    ny, nx = 120, 160
    yy, xx = np.mgrid[0:ny, 0:nx]
    right2d = ((yy - 60) / 45.0) ** 2 + ((xx - 45) / 30.0) ** 2 <= 1
    left2d = ((yy - 60) / 45.0) ** 2 + ((xx - 115) / 30.0) ** 2 <= 1
    hu = np.full((nz, ny, nx), 40.0, np.float32)
    right = np.repeat(right2d[None], nz, 0)
    left = np.repeat(left2d[None], nz, 0)
    hu[right | left] = -850.0
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    return hu, right, left


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_paints_and_keeps_the_labels_consistent(pattern):
    hu, right, left = _host()
    out, r, lf, eff = paint_disease(hu, right, left, SP, np.random.default_rng(1), patterns=(pattern,),
                                    sides="both")
    assert out.shape == hu.shape and out.dtype == np.float32
    assert not (r & lf).any() and not (eff & (r | lf)).any()
    assert ((r | lf | eff) == (right | left)).all()     # nothing leaves the pleural cavity
    changed = np.abs(out - hu) > 50
    assert changed.any(), pattern
    assert not changed[~(right | left)].any()          # the chest wall is untouched
    if pattern == "effusion":
        assert eff.sum() > 100
    else:
        assert not eff.any()
        assert (r == right).all() and (lf == left).all()  # painted disease stays lung


def test_effusion_is_fluid_posterior_and_not_lung_and_compresses_the_lung_beside_it():
    hu, right, left = _host()
    out, r, lf, eff = paint_disease(hu, right, left, SP, np.random.default_rng(3), patterns=("effusion",),
                                    sides="right")
    assert eff.any() and not (eff & left).any()
    assert np.median(out[eff]) > -20 and np.median(out[eff]) < 45       # fluid HU
    ys = np.nonzero(eff)[1]
    assert ys.mean() > np.nonzero(right)[1].mean()                      # dependent (posterior)
    from scipy import ndimage as ndi
    beside = r & ndi.binary_dilation(eff, iterations=2)
    assert np.median(out[beside]) > np.median(hu[beside]) + 100          # compressed, denser lung


def test_dependent_and_white_lung_consolidation_are_dense_lung():
    hu, right, left = _host()
    for pattern in ("dependent_consolidation", "white_lung"):
        out, r, lf, eff = paint_disease(hu, right, left, SP, np.random.default_rng(7), patterns=(pattern,),
                                        sides="both")
        dense = (out > -200) & (right | left)
        assert dense.sum() > 0.1 * (right | left).sum()
        assert (r | lf)[dense].all() and not eff.any()
    out, *_ = paint_disease(hu, right, left, SP, np.random.default_rng(7), patterns=("white_lung",),
                            sides="both")
    lung = right | left
    assert (out[lung] > -400).mean() > 0.85         # >= 90% of both lungs dense


def test_deterministic_and_bad_arguments_refused():
    hu, right, left = _host()
    a = paint_disease(hu, right, left, SP, np.random.default_rng(11))
    b = paint_disease(hu, right, left, SP, np.random.default_rng(11))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[3], b[3])
    with pytest.raises(ValueError, match="unknown pattern"):
        paint_disease(hu, right, left, SP, np.random.default_rng(0), patterns=("pneumothorax",))
    with pytest.raises(ValueError, match="same 3-D shape"):
        paint_disease(hu[0], right[0], left[0], SP, np.random.default_rng(0))


def test_single_slice_works():
    hu, right, left = _host(nz=1)
    out, r, lf, eff = paint_disease(hu, right, left, SP, np.random.default_rng(2))
    assert out.shape == hu.shape


def test_measurement_case_fills_the_posterior_fraction():
    hu, right, left = _host(nz=4)
    out = paint_dependent_consolidation(hu, right, left, fraction=0.4)
    lung = right | left
    dense = lung & (out > -100)
    frac = dense.sum() / lung.sum()
    assert 0.25 < frac < 0.45                      # 40% of the rows is ~34% of an ellipse
    assert np.nonzero(dense)[1].min() > 60         # all of it behind the lungs' middle row


def test_full_resolution_painting_resamples_disease_and_labels_to_the_net_grid():
    """Training paints at the scanner's resolution, then resamples (the node never sees disease
    drawn on the 2.5 mm grid): the label follows the painted lung, effusion leaves it."""
    from segmentation.lung_net import LEFT, RIGHT
    from segmentation.train_lungs import PIXEL_MM, paint_full_res

    hu, right, left = _host(nz=4)
    label = np.zeros(hu.shape, np.uint8)
    label[right] = RIGHT
    label[left] = LEFT
    rng = np.random.default_rng(3)
    layer = paint_full_res("toy", hu, SP, label, rng, "layer")
    assert layer.hu.shape == (4, round(120 * SP[1] / PIXEL_MM), round(160 * SP[2] / PIXEL_MM))
    assert layer.label.shape == layer.hu.shape
    lung = layer.label > 0
    # the homogeneous dependent layer is dense and stays lung
    assert (layer.hu[lung] > -350).mean() > 0.15
    assert abs(int(lung.sum()) - int((paint_full_res("toy", hu, SP, label, rng, ("emphysema",)).label > 0).sum())) \
        <= 0.02 * lung.sum()
    wet = paint_full_res("toy", hu, SP, label, np.random.default_rng(4), ("effusion",))
    assert (wet.label > 0).sum() < lung.sum()
    assert wet.name == "toy:effusion" and layer.name == "toy:layer"
