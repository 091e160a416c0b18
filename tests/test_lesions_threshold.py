"""The threshold lesion engine: phantom GGO / consolidation volumes and a lesion-free real lung."""

from __future__ import annotations


import pytest
import torch

from node.phantom import phantom_volume
from quant.measure import measure
from segmentation.engine import EngineUnavailable, check_engine, segment

from test_lungs import LIDC, load_every_second_slice

LESION_FREE_MAX_PCT = 3.0   # measured 1.06% on the full LIDC-IDRI-0001 series


@pytest.fixture(scope="module")
def phantom_measurements():
    volume, truth = phantom_volume(seed=0)
    return measure(volume, segment(volume, lung_engine="classical")), truth


@pytest.mark.parametrize("key", ["lung_volume_ml", "ggo_volume_ml", "consolidation_volume_ml"])
def test_phantom_volumes_within_5_percent(phantom_measurements, key):
    """The threshold engine with the classical lungs (its original pairing)."""
    result, truth = phantom_measurements
    assert getattr(result, key) == pytest.approx(truth[key], rel=0.05)


@pytest.mark.xfail(strict=True, reason=(
    "known failure: with the LungNet lungs the threshold engine counts 158 ml of consolidation "
    "against 47.5 ml (the net's 2.5 mm outline takes a rim of chest wall / mediastinum); the lung "
    "volume itself is within 1% (see MODEL_CARD.md, LungNet limits)"))
def test_phantom_consolidation_with_the_net_lungs():
    volume, truth = phantom_volume(seed=0)
    result = measure(volume, segment(volume))
    assert result.consolidation_volume_ml == pytest.approx(truth["consolidation_volume_ml"], rel=0.05)


def test_lesion_free_real_lung_small_percentage():
    volume = load_every_second_slice(LIDC)
    result = measure(volume, segment(volume))
    assert result.lesion_pct is not None
    assert result.lesion_pct < LESION_FREE_MAX_PCT


def test_engine_refusals_name_the_problem():
    volume, _ = phantom_volume(seed=0, slices=40, size=128)
    with pytest.raises(ValueError, match="unknown lesion engine"):
        segment(volume, engine="nnunet")
    if not torch.cuda.is_available():
        with pytest.raises(EngineUnavailable, match="cuda"):
            check_engine("unet", "cuda")
