"""The synthetic lesion generator: HU ranges, extent, containment, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.lesion_synth import (
    ALL_PATTERNS, CONSOLIDATION_HU, DENSE_FAMILY, DENSE_HU, GGO_HU, HOMOGENEOUS_HU, MIMICS, PATTERNS,
    add_mimics, synthesize_lesions,
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


def _enclosed_air(out, lab, lung):
    """Aerated voxels (not labelled) enclosed in-plane by the lesion: the bronchogram lumen."""
    from scipy import ndimage as ndi

    filled = np.stack([ndi.binary_fill_holes(m) for m in (lab > 0)])
    return filled & (lab == 0) & lung & (out < -700)


def test_dense_consolidation_has_air_bronchograms_with_the_lumen_excluded():
    dark = []
    for seed in range(10):
        hu, lung, out, lab = _dense(seed)
        dark.append(int(_enclosed_air(out, lab, lung).sum()))
        # the lumen is air, not consolidation: no consolidation voxel at air-bronchogram HU
        assert ((lab == 2) & (out < -790)).sum() <= 0.002 * max(1, (lab == 2).sum())
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


# --- the dense family (issue 6) -------------------------------------------------------------

NEW_DENSE = ("dependent", "lobar", "white_lung", "mixed")


def _paint(pattern, seed, ml=60.0, **kw):
    hu, lung = _host()
    out, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(seed), ml, pattern=pattern, **kw)
    return hu, lung, out, lab


@pytest.mark.parametrize("pattern", NEW_DENSE)
@pytest.mark.parametrize("seed", range(3))
def test_dense_family_truth_is_right(pattern, seed):
    from scipy import ndimage as ndi

    hu, lung, out, lab = _paint(pattern, seed)
    assert set(NEW_DENSE) <= set(DENSE_FAMILY) <= set(ALL_PATTERNS)
    assert not (lab > 0)[~lung].any() and np.array_equal(out[~lung], hu[~lung])
    cons = lab == 2
    assert cons.sum() > 0
    # consolidation: homogeneous, 0..60 HU class (HOMOGENEOUS_HU), measured in its in-plane core
    core = ndi.binary_erosion(cons, np.ones((1, 5, 5), bool))
    v = out[core]
    assert v.size > 50
    assert HOMOGENEOUS_HU[0] - 25 <= np.median(v) <= HOMOGENEOUS_HU[1] + 25
    assert np.percentile(v, 90) - np.percentile(v, 10) < 120, "homogeneous"
    # every consolidation voxel is dense (no air-bronchogram lumen, no aerated lung in it)
    assert ((lab == 2) & (out < -500)).sum() <= 0.01 * cons.sum()
    # GGO voxels (transition zones) are ground glass or the blend towards consolidation
    g = out[lab == 1]
    if g.size > 20:
        assert GGO_HU[0] - 60 <= np.median(g) <= CONSOLIDATION_HU[1]


@pytest.mark.parametrize("pattern", ("dependent", "lobar", "mixed"))
def test_dense_family_extent_follows_the_requested_volume(pattern):
    for seed in range(3):
        *_, lab = _paint(pattern, seed, ml=50.0)
        got = (lab > 0).sum() * np.prod(SPACING) / 1000.0
        assert 0.7 * 50.0 <= got <= 1.1 * 50.0, (pattern, seed, got)


def test_dependent_consolidation_is_posterior_and_white_lung_fills_the_lung():
    for seed in range(3):
        _, lung, _, lab = _paint("dependent", seed, ml=40.0)
        y = np.nonzero(lung)[1]
        yc = np.nonzero(lab == 2)[1]
        assert np.median(yc) > np.percentile(y, 70), "consolidation in the dependent (posterior, +y) lung"
        _, lung, _, lab = _paint("white_lung", seed, ml=5.0)  # white lung ignores a small request
        assert (lab > 0).sum() >= 0.75 * lung.sum()


def test_dense_family_air_bronchograms_lumen_not_consolidation():
    found = 0
    for seed in range(8):
        hu, lung, out, lab = _paint("lobar", seed, ml=80.0)
        air = _enclosed_air(out, lab, lung)
        found += air.any()
        assert not (lab[air] > 0).any()
    assert found >= 3


def test_mixed_has_both_ggo_and_consolidation_in_most_draws():
    both = 0
    for seed in range(6):
        *_, lab = _paint("mixed", seed, ml=50.0)
        both += (lab == 1).sum() > 50 and (lab == 2).sum() > 50
    assert both >= 3


def test_vessels_crossing_ggo_are_not_lesion_when_asked():
    hu, lung = _host()
    vessel = np.zeros(lung.shape, bool)
    vessel[:, 48, 20:50] = True  # the host's vessel (60 HU)
    hits = 0
    for seed in range(6):
        _, lab = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(seed), 150.0, pattern="ggo",
                                    vessels_not_lesion=True)
        _, lab0 = synthesize_lesions(hu, lung, SPACING, np.random.default_rng(seed), 150.0, pattern="ggo")
        assert not (lab[vessel & lung] == 1).any()
        hits += (lab0[vessel & lung] == 1).any()
        assert np.array_equal(lab[~vessel], lab0[~vessel])
    assert hits >= 1, "the check needs GGO over the vessel in some draws"


# --- normal-lung mimics (labelled background by the trainer) -----------------------------------

def test_mimics_stay_in_the_lung_and_in_their_hu_ranges():
    hu, lung = _host()
    for kind in MIMICS:
        out = add_mimics(hu, lung, SPACING, np.random.default_rng(4), kinds=(kind,))
        assert np.array_equal(out[~lung], hu[~lung]), kind
        assert (out >= hu - 1e-3).all(), kind  # mimics only add density
        changed = (out - hu) > 5.0
        if kind == "dependent_density":
            assert changed.any()
            was_aerated = hu < -680
            assert out[was_aerated].max() <= -680.0 + 1e-3, "normal dependent lung stays below -680 HU"
            y = np.nonzero(changed)[1]
            assert np.median(y) > np.median(np.nonzero(lung)[1]), "gravity gradient is posterior"
        elif kind == "nodule":
            assert changed.any() and out[changed].max() <= 80.0 + 1.0
            assert changed.sum() * np.prod(SPACING) / 1000.0 < 3 * (4 / 3) * np.pi * 9.5 ** 3 / 1000.0
        elif kind == "calcified_granuloma":
            assert out.max() >= 150.0
        elif kind == "subpleural_line":
            assert changed.any() and out[changed].max() <= 0.0 + 1e-3
    with pytest.raises(ValueError):
        add_mimics(hu, lung, SPACING, np.random.default_rng(0), kinds=("tumour",))
