"""The synthetic lesion generator: HU ranges, extent, containment, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.lesion_synth import (
    ALL_PATTERNS, CONSOLIDATION_HU, DENSE_HU, GGO_HU, PATTERNS, synthesize_lesions,
)

SPACING = (2.5, 1.5, 1.5)


def _host(seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:12, :96, :128]
    lung = (((y - 48) / 38.0) ** 2 + ((x - 34) / 26.0) ** 2 < 1) | (((y - 48) / 38.0) ** 2 + ((x - 94) / 26.0) ** 2 < 1)
    lung &= (z > 0) & (z < 11)
    hu = np.where(lung, -860.0, 40.0).astype(np.float32) + rng.normal(0, 15, lung.shape).astype(np.float32)
    # a few "vessels" brighter than any lesion
    hu[:, 48, 20:50] = 60.0
    return hu, lung


@pytest.mark.parametrize("pattern", PATTERNS)
def test_hu_ranges_and_containment(pattern):
    hu, lung = _host()
    out, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(1), 40.0, pattern=pattern)
    assert lab.shape == hu.shape and out.shape == hu.shape
    assert not (lab > 0)[~lung].any(), "lesion outside the lung"
    assert np.array_equal(out[~lung], hu[~lung]), "host changed outside the lung"
    ggo = out[(lab == 1)]
    assert ggo.size > 0
    # core of the GGO (not the soft border, not crossed vessels): inside the literature range
    assert GGO_HU[0] - 30 <= np.median(ggo) <= GGO_HU[1]
    assert np.mean((ggo >= GGO_HU[0] - 60) & (ggo <= GGO_HU[1] + 150)) > 0.9
    if pattern in ("consolidation", "reversed_halo"):
        cons = out[lab == 2]
        assert cons.size > 0
        assert CONSOLIDATION_HU[0] - 60 <= np.median(cons) <= CONSOLIDATION_HU[1] + 30
    else:
        assert not (lab == 2).any()
    # lesions only raise HU: vessels stay
    assert (out >= hu - 1e-3).all()


@pytest.mark.parametrize("ml", [2.0, 20.0, 150.0])
def test_extent_follows_the_requested_volume(ml):
    hu, lung = _host()
    _, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(2), ml)
    got = (lab > 0).sum() * np.prod(SPACING) / 1000.0
    assert 0.75 * ml <= got <= 1.1 * ml


def test_extent_is_capped_at_the_lung():
    hu, lung = _host()
    lung_ml = lung.sum() * np.prod(SPACING) / 1000.0
    _, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(3), 10 * lung_ml)
    assert (lab > 0).sum() <= lung.sum()


def test_deterministic_with_seed():
    hu, lung = _host()
    a = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(7), 30.0)
    b = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(7), 30.0)
    c = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(8), 30.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_bad_input_is_refused():
    hu, lung = _host()
    with pytest.raises(ValueError):
        synthesize_lesions(hu, lung[:-1], SPACING, np.random.default_rng(0), 10.0)
    with pytest.raises(ValueError):
        synthesize_lesions(hu, lung, SPACING, np.random.default_rng(0), 10.0, pattern="nodule")
    out, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(0), 0.0)
    assert not lab.any() and np.array_equal(out, hu)


def _dense(seed):
    hu, lung = _host()
    out, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(seed), 40.0,
                                  pattern="dense_consolidation")
    return hu, lung, out, lab


@pytest.mark.parametrize("seed", range(6))
def test_dense_consolidation_is_homogeneous_dense_and_subpleural(seed):
    hu, lung, out, lab = _dense(seed)
    assert not (lab > 0)[~lung].any() and np.array_equal(out[~lung], hu[~lung])
    assert (out >= hu - 1e-3).all()
    cons = lab == 2
    assert cons.sum() >= 0.6 * (lab > 0).sum(), "mostly consolidation, little GGO"
    from scipy import ndimage as ndi
    core = ndi.binary_erosion(cons, np.ones((1, 5, 5), bool))  # in-plane interior (no margin)
    v = out[core & (out > -700)]  # solid part (air bronchograms excluded)
    assert DENSE_HU[0] - 40 <= np.median(v) <= DENSE_HU[1] + 20
    assert np.percentile(v, 90) - np.percentile(v, 10) < 120, "homogeneous"
    got = (lab > 0).sum() * np.prod(SPACING) / 1000.0
    assert 0.75 * 40.0 <= got <= 1.1 * 40.0
    depth = np.stack([ndi.distance_transform_edt(m, sampling=SPACING[1:]) for m in lung])
    assert depth[lab > 0].min() <= 2.0, "touches the pleura"
    assert np.median(depth[lab > 0]) < np.median(depth[lung])


def test_dense_consolidation_has_air_bronchograms_in_some_draws():
    dark = []
    for seed in range(10):
        hu, lung, out, lab = _dense(seed)
        dark.append(int(((lab == 2) & (out < -700)).sum()))
    assert sum(d > 0 for d in dark) >= 3


def test_default_pattern_draw_is_unchanged():
    """The opt-in pattern must not change what the default draw produces (reproducibility)."""
    assert "dense_consolidation" not in PATTERNS and "dense_consolidation" in ALL_PATTERNS
    hu, lung = _host()
    a = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(5), 30.0)
    b = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(5), 30.0, patterns=PATTERNS)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        synthesize_lesions(hu, lung, SPACING, np.random.default_rng(0), 10.0, patterns=("nodule",))
