"""Issue 6 items 5 and 6: nodules and granulomas do not make a lobe involved; typed quality
flags for dense lungs, lung/lesion disagreement and lungs too small for the body."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quant.involvement import classify_lesions
from quant.measure import measure
from quant.quality import QualityCode, assess
from segmentation.types import Lobe, Masks, Volume

SPACING = (2.0, 1.0, 1.0)
SHAPE = (80, 160, 200)


def _ball(center_zyx, radius_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center_zyx, spacing))
    return d2 <= radius_mm ** 2


def _chest():
    """Body (soft tissue) with two box lungs of aerated parenchyma and simple lobes."""
    hu = np.full(SHAPE, -1000, np.int16)
    hu[:, 10:150, 10:190] = 40                      # body
    right = np.zeros(SHAPE, bool)
    left = np.zeros(SHAPE, bool)
    right[5:75, 30:130, 25:95] = True
    left[5:75, 30:130, 105:175] = True
    hu[right | left] = -850
    z = np.arange(SHAPE[0])[:, None, None]
    lobes = np.zeros(SHAPE, np.uint8)
    lobes[left & (z >= 40)] = Lobe.LEFT_UPPER
    lobes[left & (z < 40)] = Lobe.LEFT_LOWER
    lobes[right & (z >= 50)] = Lobe.RIGHT_UPPER
    lobes[right & (z >= 30) & (z < 50)] = Lobe.RIGHT_MIDDLE
    lobes[right & (z < 30)] = Lobe.RIGHT_LOWER
    return hu, left, right, lobes


def _measure(hu, left, right, lobes, lesion):
    masks = Masks(lung_left=left, lung_right=right, lesion=lesion & (left | right),
                  engine="threshold", lobes=lobes,
                  lobe_confidence={k: "high" for k in ("left_upper", "left_lower", "right_upper",
                                                       "right_middle", "right_lower")})
    return measure(Volume(hu, SPACING), masks)


def test_solitary_nodule_does_not_involve_a_lobe() -> None:
    hu, left, right, lobes = _chest()
    nodule = _ball((60, 80, 140), 8.0)               # 16 mm solid nodule, left upper lobe
    hu[nodule] = 30
    m = _measure(hu, left, right, lobes, nodule)
    assert m.lesion_volume_ml == pytest.approx(nodule.sum() * 0.002)   # still measured
    assert m.lobes["left_upper"].lesion_pct > 0.1
    assert m.lobes["left_upper"].involvement_pct == 0
    assert m.involved_lobes == 0 and m.ct_score == 0
    assert [c.kind for c in m.excluded_lesions] == ["nodule"]
    assert any("1 nodule component" in f for f in m.quality_flags)
    doc = json.loads(json.dumps(m.to_json_dict()))
    assert doc["excluded_lesions"][0]["kind"] == "nodule"


def test_calcified_granuloma_is_excluded_even_next_to_pneumonia() -> None:
    hu, left, right, lobes = _chest()
    granuloma = _ball((20, 60, 60), 3.0)             # right lower lobe, 6 mm, +600 HU
    hu[granuloma] = 600
    patch = np.zeros(SHAPE, bool)                    # irregular GGO band next to it
    patch[14:28, 66:74, 30:90] = True                # 2 mm gap: a separate component
    hu[patch] = -600
    m = _measure(hu, left, right, lobes, granuloma | patch)
    kinds = {c.kind for c in m.excluded_lesions}
    assert kinds == {"calcified"}
    assert m.lobes["right_lower"].involvement_pct == pytest.approx(
        100 * patch[lobes == Lobe.RIGHT_LOWER].sum() / (lobes == Lobe.RIGHT_LOWER).sum())
    assert m.involved_lobes == 1


def test_pneumonic_patches_count() -> None:
    hu, left, right, lobes = _chest()
    # a subpleural crescent-like band (elongated) and a large confluent patch
    band = np.zeros(SHAPE, bool)
    band[10:35, 120:128, 30:90] = True
    big = _ball((55, 80, 140), 20.0) & left          # 40 mm: above nodule size
    hu[band | big] = -550
    m = _measure(hu, left, right, lobes, band | big)
    assert m.excluded_lesions == []
    assert m.involved_lobes >= 2
    assert m.lobes["left_upper"].score >= 1 and m.lobes["right_lower"].score >= 1


def test_many_compact_foci_are_read_as_multifocal_pneumonia() -> None:
    hu, left, right, lobes = _chest()
    foci = np.zeros(SHAPE, bool)
    for i, (z, y, x) in enumerate([(15, 50, 40), (15, 100, 80), (45, 60, 120), (45, 110, 160),
                                   (65, 50, 50), (65, 110, 150)]):
        foci |= _ball((z, y, x), 7.0)              # 14 mm: above the small-focus size
    hu[foci] = -500
    inv = classify_lesions(hu, foci, SPACING)
    assert inv.excluded == [] and inv.counted.sum() == foci.sum()
    assert "multifocal" in inv.notes[0]


def test_nodule_touching_pneumonia_is_not_isolated() -> None:
    hu, left, right, lobes = _chest()
    nodule = _ball((60, 80, 140), 6.0)
    patch = np.zeros(SHAPE, bool)
    patch[50:70, 90:96, 110:170] = True               # 5 mm from the nodule's surface
    patch &= ~nodule
    hu[nodule | patch] = -400
    inv = classify_lesions(hu, nodule | patch, SPACING)
    assert inv.counted.sum() == (nodule | patch).sum()


@pytest.mark.parametrize("neighbour_radius_mm, nodule_expected", [(0.0, True), (2.5, False)])
def test_a_speck_beside_a_nodule_leaves_it_isolated_a_focus_does_not(neighbour_radius_mm,
                                                                      nodule_expected) -> None:
    """Found on LIDC-IDRI-0001 at 1.25 mm slices: a 2-voxel mask speck within 10 mm of the
    21 mm nodule made it pneumonia. A speck (rule 2) does not break isolation; a 5 mm focus
    at the same place does."""
    hu, left, right, lobes = _chest()
    nodule = _ball((40, 80, 140), 8.0)                # 16 mm solid nodule
    other = np.zeros(SHAPE, bool)
    other[40, 80, 154] = True                         # one voxel, 6 mm from its surface
    if neighbour_radius_mm:
        other = _ball((40, 80, 156.5), neighbour_radius_mm)   # 5 mm focus, same gap
    assert not (other & nodule).any()
    hu[nodule] = 30
    hu[other] = -400
    inv = classify_lesions(hu, nodule | other, SPACING)
    kinds = sorted(c.kind for c in inv.excluded)
    if nodule_expected:
        assert kinds == ["nodule", "speck"] and not inv.counted.any()
    else:
        assert "nodule" not in kinds and inv.counted[nodule].all()


def test_isolated_small_focus_is_not_counted_but_one_near_a_patch_is() -> None:
    hu, left, right, lobes = _chest()
    focus = np.zeros(SHAPE, bool)
    focus[30:33, 60:62, 40:52] = True                # 6 x 2 x 12 mm streak, isolated
    near = _ball((60, 80, 140), 3.0)                 # 6 mm, 4 mm from a patch
    patch = np.zeros(SHAPE, bool)
    patch[55:66, 87:95, 110:170] = True
    hu[focus | near | patch] = -500
    inv = classify_lesions(hu, focus | near | patch, SPACING)
    assert [c.kind for c in inv.excluded] == ["small_focus"]
    assert inv.counted.sum() == (near | patch).sum()


def test_a_group_of_small_foci_under_a_centimetre_is_not_counted_but_a_larger_group_is() -> None:
    # lesion-free lungs (LIDC-IDRI-0001, normal002) scored 1 from two small foci a few mm
    # apart: neither was "isolated", though together they are one sub-centimetre opacity
    hu, left, right, lobes = _chest()
    pair = _ball((30, 60, 50), 2.5) | _ball((30, 60, 58), 2.5)          # 3 mm gap, ~0.13 ml
    group = np.zeros(SHAPE, bool)
    for k in range(4):                                                 # 4 x 0.5 ml, 4 mm gaps
        group |= _ball((50, 100, 60 + 14 * k), 5.0)
    hu[pair | group] = -500
    inv = classify_lesions(hu, pair | group, SPACING)
    assert sorted(c.kind for c in inv.excluded) == ["small_focus", "small_focus"]
    assert not (inv.counted & pair).any()
    assert inv.counted.sum() == group.sum()


def test_specks_are_not_counted() -> None:
    hu, left, right, lobes = _chest()
    speck = np.zeros(SHAPE, bool)
    speck[40, 60, 50] = speck[20, 100, 150] = True
    inv = classify_lesions(hu, speck, SPACING)
    assert {c.kind for c in inv.excluded} == {"speck"} and not inv.counted.any()


# --- quality flags ------------------------------------------------------------------------


def _codes(findings) -> set[tuple[QualityCode, str]]:
    return {(f.code, f.region) for f in findings}


def test_clean_chest_has_no_quality_findings() -> None:
    hu, left, right, _ = _chest()
    lesion = _ball((40, 80, 60), 10.0)
    assert assess(hu, left, right, lesion, SPACING) == []


def test_thick_slices_are_flagged_for_the_whole_series() -> None:
    """Slices more than 3 mm apart: no airway tree, so geometric lobes, no hilar filter and
    unreadable nodule shapes (benchmarks/slice_spacing.py); the flag says the scores are
    likely too high. At 3 mm (the lobe stage still traces the tree) nothing is raised."""
    hu, left, right, _ = _chest()
    lesion = _ball((40, 80, 60), 10.0)
    assert assess(hu, left, right, lesion, (3.0, 1.0, 1.0)) == []
    findings = assess(hu, left, right, lesion, (5.0, 1.0, 1.0))
    assert _codes(findings) == {(QualityCode.THICK_SLICES, "lungs")}
    assert findings[0].value == 5.0 and findings[0].threshold == 3.0
    assert "likely too high" in findings[0].message
    # no lungs, nothing measured: no flag about how it was measured
    empty = np.zeros(SHAPE, bool)
    assert assess(hu, empty, empty, empty, (5.0, 1.0, 1.0)) == []


def test_a_sharp_kernel_is_flagged_for_the_whole_series() -> None:
    """Aerated-lung noise above 30 HU (every series here, soft or standard kernels, measures
    13.5-26.3 HU; the phantom 24 HU): a lung-kernel reconstruction, on which the lesion model
    over-calls (benchmarks/sharp_kernel.py)."""
    hu, left, right, _ = _chest()
    lesion = np.zeros(SHAPE, bool)
    rng = np.random.default_rng(0)
    soft = hu + rng.standard_normal(SHAPE) * 20.0
    assert assess(soft, left, right, lesion, SPACING) == []
    sharp = hu + rng.standard_normal(SHAPE) * 70.0
    findings = assess(sharp, left, right, lesion, SPACING)
    assert _codes(findings) == {(QualityCode.HIGH_NOISE, "lungs")}
    assert findings[0].value == pytest.approx(70.0, rel=0.15) and findings[0].threshold == 30.0


def test_dense_lung_is_flagged() -> None:
    hu, left, right, _ = _chest()
    # 70% of the right lung dense, at consolidation density below fluid (-100 HU)
    hu[right & (np.arange(SHAPE[1])[None, :, None] >= 60)] = -100
    findings = assess(hu, left, right, np.zeros(SHAPE, bool), SPACING)
    assert _codes(findings) == {(QualityCode.DENSE_LUNG, "right_lung")}
    assert findings[0].value == pytest.approx(70.0, abs=1.0)


def test_fluid_density_inside_the_lung_mask_is_flagged() -> None:
    """A homogeneous posterior layer at +15 HU (noise 10 HU) inside the right lung mask: effusion
    taken as lung or airless consolidation, flagged with its volume; the same layer at -150 HU
    (dense lung, not fluid) is not."""
    rng = np.random.default_rng(0)
    hu, left, right, _ = _chest()
    layer = right & (np.arange(SHAPE[1])[None, :, None] >= 110)
    wet = hu.copy()
    wet[layer] = 15.0 + rng.normal(0, 10, int(layer.sum()))
    findings = assess(wet, left, right, np.zeros(SHAPE, bool), SPACING)
    fluid = [f for f in findings if f.code is QualityCode.FLUID_IN_LUNG]
    assert [f.region for f in fluid] == ["right_lung"]
    layer_ml = layer.sum() * np.prod(SPACING) / 1000.0
    # the smoothing loses the layer's edge against aerated lung: at least three quarters is found
    assert layer_ml >= 50 and 0.75 * layer_ml <= fluid[0].value <= layer_ml
    dense = hu.copy()
    dense[layer] = -150.0 + rng.normal(0, 10, int(layer.sum()))
    assert QualityCode.FLUID_IN_LUNG not in {f.code for f in assess(dense, left, right, np.zeros(SHAPE, bool), SPACING)}


def test_lung_boundary_through_lesion_is_flagged() -> None:
    hu, left, right, _ = _chest()
    # the right lung mask stops inside a posterior consolidation that continues outside it
    lesion = right & (np.arange(SHAPE[1])[None, :, None] >= 100)
    hu[lesion] = 10
    findings = assess(hu, left, right, lesion, SPACING)
    assert (QualityCode.LUNG_LESION_DISAGREEMENT, "right_lung") in _codes(findings)
    assert (QualityCode.LUNG_LESION_DISAGREEMENT, "left_lung") not in _codes(findings)


def test_lung_small_for_the_body_is_flagged() -> None:
    hu, left, right, _ = _chest()
    # body 140 x 180 mm over 70 slices of 2 mm = 3528 ml -> expected lungs 0.26 x 3528 =
    # 917 ml, left share 0.45 -> 413 ml; flagged below 0.6 x 413 = 248 ml. The box lung is
    # 980 ml; keep a 10 mm wide strip of it (140 ml), the rest became soft tissue
    small_left = left & (np.arange(SHAPE[2])[None, None, :] >= 165)
    hu[left & ~small_left] = 30
    findings = assess(hu, small_left, right, np.zeros(SHAPE, bool), SPACING)
    assert _codes(findings) == {(QualityCode.SMALL_LUNG_FOR_BODY, "left_lung")}


def test_findings_are_typed_in_measurements_json() -> None:
    hu, left, right, lobes = _chest()
    hu[right] = 20
    m = _measure(hu, left, right, lobes, np.zeros(SHAPE, bool))
    doc = json.loads(json.dumps(m.to_json_dict()))
    codes = {(f["code"], f["region"]) for f in doc["quality_findings"]}
    assert ("dense_lung", "right_lung") in codes
    assert any(f.startswith("dense_lung: right lung") for f in doc["quality_flags"])


def test_quality_codes_reach_the_sr(tmp_path) -> None:
    from pathlib import Path

    from dicom_validation import DCIODVFY, dciodvfy_errors
    from node.outputs.seg import build_segs
    from node.outputs.sr import build_sr
    from node.volume import load_series
    from quant.hu_split import split_lesion

    cip = Path("/work/shared/data/chest_imaging_platform_ct64/ct-64Dicom")
    if not cip.is_dir():
        pytest.skip("shared/data is not mounted")
    series = load_series(sorted(cip.glob("*.dcm")))
    hu = series.volume.hu
    x = np.arange(hu.shape[2])[None, None, :]
    left = (hu > -1000) & (hu < -400) & (x >= hu.shape[2] // 2)
    right = (hu > -200) & (hu < 100) & (x < hu.shape[2] // 2)   # a "lung" of soft tissue
    masks = Masks(lung_left=left, lung_right=right, lesion=np.zeros(hu.shape, bool),
                  engine="threshold", lobes_unavailable_reason="not computed in this test")
    ggo, cons = split_lesion(hu, masks.lesion, -750.0, -350.0)
    m = measure(series.volume, masks, split=(ggo, cons))
    assert ("dense_lung", "right_lung") in {(f.code.value, f.region) for f in m.quality_findings}
    segs = build_segs(series, masks, ggo, cons, series_numbers={"lesions": 901, "lungs": 903,
                      "lobes": 904}, revision=1, software_version="t")
    sr = build_sr(series, segs, m, series_number=902, revision=1, software_version="t")
    texts = [str(item.TextValue) for item in sr.ContentSequence[-1].ContentSequence
             if "TextValue" in item]
    assert any(t.startswith("dense_lung: right lung") for t in texts)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    if DCIODVFY is not None:
        assert dciodvfy_errors(path) == []


def test_within_by_slabs_is_the_whole_distance_transform() -> None:
    """quant.involvement._within works slab by slab; it must equal one distance transform
    over the whole volume, at slab edges too."""
    from scipy import ndimage as ndi

    from quant.involvement import _within

    rng = np.random.default_rng(5)
    mask = rng.random((70, 40, 50)) > 0.995
    mask[0, 0, 0] = mask[69, 39, 49] = True
    spacing = np.array([1.25, 0.8, 0.8])
    for radius in (2.0, 5.0, 9.5):
        whole = ndi.distance_transform_edt(~mask, sampling=spacing) <= radius
        for slab in (1, 7, 24, 200):
            assert (_within(mask, spacing, radius, slab=slab) == whole).all(), (radius, slab)


def test_classification_in_the_lesion_box_is_the_classification_on_the_whole_grid() -> None:
    """classify_lesions works in the lesion's bounding box: the same kinds, figures, centroids
    (on the whole grid) and counted voxels as the same rules run on the whole volume."""
    from quant.involvement import _classify_in_box

    hu, left, right, lobes = _chest()
    nodule = _ball((60, 80, 140), 8.0)
    calcified = _ball((20, 100, 60), 3.0)
    speck = np.zeros(SHAPE, bool)
    speck[40, 60, 50] = True
    patch = np.zeros(SHAPE, bool)
    patch[10:30, 40:60, 150:170] = True
    lesion = nodule | calcified | speck | patch
    hu[lesion] = -400
    hu[calcified] = 600
    boxed = classify_lesions(hu, lesion, SPACING)
    whole = _classify_in_box(hu, lesion, SPACING, (0, 0, 0))
    assert sorted(c.kind for c in boxed.excluded) == ["calcified", "nodule", "speck"]
    assert boxed.excluded == whole.excluded
    assert boxed.n_components == whole.n_components == 4
    np.testing.assert_array_equal(boxed.counted, whole.counted)
    assert boxed.counted.sum() == patch.sum()


@pytest.mark.parametrize("where", ["inside", "on the edge"])
def test_lung_surface_in_its_box_is_the_surface_on_the_whole_grid(where) -> None:
    from scipy import ndimage as ndi

    from quant.quality import _surface

    mask = _ball((40, 80, 100), 30.0)
    if where == "on the edge":
        mask |= _ball((0, 80, 199), 25.0)       # reaches the first slice and the last column
    expected = mask & ~ndi.binary_erosion(mask, border_value=0)
    np.testing.assert_array_equal(_surface(mask), expected)
    assert not _surface(np.zeros(SHAPE, bool)).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_within_radius_by_slabs_and_boxes_is_the_whole_grid_distance(seed) -> None:
    from scipy import ndimage as ndi

    from quant.involvement import _within

    rng = np.random.default_rng(seed)
    mask = rng.random(SHAPE) > 0.99995                     # sparse foci, far apart
    mask |= _ball((70, 20, 190), 6.0)                       # and a patch at the array's edge
    spacing = np.asarray(SPACING, float)
    expected = ndi.distance_transform_edt(~mask, sampling=spacing) <= 5.0
    np.testing.assert_array_equal(_within(mask, spacing, 5.0, slab=7), expected)
    assert not _within(np.zeros(SHAPE, bool), spacing, 5.0).any()
