"""quant/: HU split, lobe score bands, CT score equivalent, histogram metrics, measure()."""

from __future__ import annotations

import numpy as np
import pytest

from quant.ct_score import ct_score_equivalent, fit_percent, involved_lobes, lobe_score
from quant.hu_distribution import (bin_edges, hellinger_distance, histogram_iou, load_reference)
from quant.hu_split import split_lesion
from quant.measure import measure
from segmentation.types import Masks, Volume


def test_split_lesion_boundaries():
    hu = np.array([-751, -750, -351, -350, 0, -900, -600], dtype=np.float32)
    lesion = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    ggo, cons = split_lesion(hu, lesion, -750, -350)
    assert ggo.tolist() == [False, True, True, False, False, False, False]
    assert cons.tolist() == [False, False, False, True, True, False, False]
    with pytest.raises(ValueError):
        split_lesion(hu, lesion, -350, -750)


@pytest.mark.parametrize("pct,score", [
    (0, 0), (1e-9, 1), (4.999, 1), (5, 2), (25, 2), (25.001, 3), (49.999, 3),
    (50, 4), (75, 4), (75.001, 5), (100, 5)])
def test_lobe_score_band_edges(pct, score):
    assert lobe_score(pct) == score


def test_lobe_score_floor_and_involved():
    assert lobe_score(0.05, floor_pct=0.1) == 0
    assert lobe_score(0.1, floor_pct=0.1) == 1
    assert involved_lobes([0, 0.05, 0.1, 30, 80], floor_pct=0.1) == 3
    with pytest.raises(ValueError):
        lobe_score(-1)


def test_ct_score_equivalent_inverts_fit():
    for s in (0.7, 1, 5, 12.3, 20, 25):
        assert ct_score_equivalent(fit_percent(s)) == pytest.approx(s, abs=1e-9)
    assert ct_score_equivalent(0.0) == 0.0           # no lesion is score 0, not the fit's 0.65
    assert 0.6 < ct_score_equivalent(0.01) < 0.7     # just above 0%: the fit's own value
    assert ct_score_equivalent(-0.27) == 0.0
    assert ct_score_equivalent(-5) == 0.0
    assert ct_score_equivalent(fit_percent(25)) == pytest.approx(25)
    assert ct_score_equivalent(100) == 25.0


def test_histogram_identities():
    rng = np.random.default_rng(0)
    p = rng.random(bin_edges().size - 1)
    assert hellinger_distance(p, p) == pytest.approx(0, abs=1e-7)
    assert histogram_iou(p, p) == pytest.approx(1)
    a = np.zeros(10)
    b = np.zeros(10)
    a[:5], b[5:] = 1, 1
    assert hellinger_distance(a, b) == pytest.approx(1)
    assert histogram_iou(a, b) == pytest.approx(0)


def test_reference_loads_and_matches_bins():
    ref = load_reference()
    assert ref.probabilities.sum() == pytest.approx(1)
    assert len(ref.sources) >= 2
    peak = ref.bin_edges_hu[int(np.argmax(ref.probabilities))]
    assert -950 < peak < -750


def _toy_volume_and_masks():
    hu = np.full((4, 10, 10), -850.0, np.float32)
    hu[1, 2:4, 2:4] = -600
    hu[2, 2:4, 2:4] = 0
    left = np.zeros(hu.shape, bool)
    left[:, :, 5:] = True
    right = np.zeros(hu.shape, bool)
    right[:, :, :5] = True
    lesion = (hu > -700)
    return Volume(hu=hu, spacing_mm=(2.0, 1.0, 1.0)), left, right, lesion


def test_measure_without_lobes_reports_none_with_reason():
    volume, left, right, lesion = _toy_volume_and_masks()
    masks = Masks(lung_left=left, lung_right=right, lesion=lesion, engine="threshold",
                  lobes=None, lobes_unavailable_reason="lobe segmentation is not implemented yet (issue 3)")
    m = measure(volume, masks)
    assert m.lobes is None and m.ct_score is None and m.involved_lobes is None
    assert any("issue 3" in f for f in m.quality_flags)
    assert m.lung_volume_ml == pytest.approx(400 * 2 / 1000)
    assert m.ggo_volume_ml == pytest.approx(4 * 2 / 1000)
    assert m.consolidation_volume_ml == pytest.approx(4 * 2 / 1000)
    assert m.lesion_pct == pytest.approx(2.0)
    assert m.ct_score_equivalent == pytest.approx(ct_score_equivalent(2.0))
    assert m.regions["right_lung"].lesion_volume_ml == pytest.approx(0.016)
    assert 0 <= m.hellinger_distance <= 1 and 0 <= m.iou_vs_reference <= 1
    assert isinstance(m.to_json_dict(), dict)


def test_measure_with_lobes_and_empty_lung():
    volume, left, right, lesion = _toy_volume_and_masks()
    lobes = np.zeros(volume.hu.shape, np.uint8)
    lobes[:, :, 5:] = 1
    lobes[:2, :, :5], lobes[2:, :5, :5], lobes[2:, 5:, :5] = 3, 4, 5
    lobes[:2, :, 5:] = 2
    masks = Masks(left, right, lesion, "threshold", lobes=lobes)
    m = measure(volume, masks)
    assert m.ct_score is not None and 0 <= m.ct_score <= 25
    # lesions only in right lobes 3 (z1) and 4 (z2) ...
    assert [k for k, v in m.lobes.items() if v.lesion_pct] == ["right_upper", "right_middle"]
    # ... but the whole lesion is one 3 mm focus: a speck, not pneumonia (quant.involvement)
    assert m.involved_lobes == 0 and m.ct_score == 0
    assert [c.kind for c in m.excluded_lesions] == ["speck"]
    empty = np.zeros(volume.hu.shape, bool)
    m0 = measure(volume, Masks(empty, empty, empty, "threshold"))
    assert m0.lung_volume_ml == 0 and m0.lesion_pct is None and m0.ct_score_equivalent is None
    assert m0.hellinger_distance is None
    assert any("zero" in f for f in m0.quality_flags)
