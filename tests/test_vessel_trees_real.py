"""`analysis.hilar_vessel_trees` (off by default) on real pneumonia CT (COVID-CT-MD cap002,
read the way `lungnode evaluate slices` reads it): the lesion model's masks around the vessel
trees that leave both hila between the hila and the lung bases are taken out, the pneumonia
at the lung bases stays, and the default analysis is left as it was
(segmentation/model_card/candidates/vessel_shape.plan.md has the figures and why it is off)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from node.analysis import segment_configured
from node.config import load_settings
from node.volume import load_series


def _removed(notes: list[str]) -> tuple[int, float]:
    for note in notes:
        found = re.match(r"hilum: (\d+) dense lesion component\(s\) .* \(([\d.]+) ml\)", note)
        if found:
            return int(found.group(1)), float(found.group(2))
    return 0, 0.0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_vessel_trees_leave_cap002_and_its_basal_pneumonia_stays(shared_data: Path) -> None:
    files = sorted((shared_data / "covid_ct_md_samples" / "cap002").glob("*.dcm"))
    volume = load_series(files, require_valid_uids=False).volume
    assert not load_settings(None, None).analysis.hilar_vessel_trees   # off by default
    default = segment_configured(volume, load_settings(None, None).analysis)
    trees = segment_configured(volume, load_settings(None, {"analysis": {"hilar_vessel_trees": True}}).analysis)
    # only removal: the same lesion mask less the vessel trees
    assert not (trees.lesion & ~default.lesion).any()
    n_default, ml_default = _removed(default.notes)
    n_trees, ml_trees = _removed(trees.notes)
    assert n_trees > n_default and ml_trees > ml_default + 20.0   # two trees of 12 and 15 ml
    voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
    removed = default.lesion & ~trees.lesion
    assert removed.sum() * voxel_ml == pytest.approx(ml_trees - ml_default, abs=0.5)
    # canonical z 45-79 (between the hila and the bases) lose most of their lesion; the
    # ground-glass pneumonia of both lower lobes (z 15-39) keeps all of it
    mid = slice(45, 80)
    assert trees.lesion[mid].sum() < 0.5 * default.lesion[mid].sum()
    base = slice(15, 40)
    assert default.lesion[base].sum() * voxel_ml > 10.0
    np.testing.assert_array_equal(trees.lesion[base], default.lesion[base])
