"""Split a lesion mask into ground-glass opacity and consolidation by HU."""

from __future__ import annotations

import numpy as np


def split_lesion(hu: np.ndarray, lesion: np.ndarray, ggo_min_hu: float,
                 consolidation_min_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (ggo, consolidation) boolean masks, subsets of ``lesion``.

    GGO: ggo_min_hu <= HU < consolidation_min_hu. Consolidation: HU >= consolidation_min_hu.
    Lesion voxels below ggo_min_hu are in neither (they count only in the total lesion volume).
    """
    if not ggo_min_hu < consolidation_min_hu:
        raise ValueError(f"ggo_min_hu ({ggo_min_hu}) must be below consolidation_min_hu ({consolidation_min_hu})")
    if hu.shape != lesion.shape:
        raise ValueError(f"hu {hu.shape} and lesion {lesion.shape} differ in shape")
    lesion = lesion.astype(bool, copy=False)
    consolidation = lesion & (hu >= consolidation_min_hu)
    ggo = lesion & (hu >= ggo_min_hu) & ~consolidation
    return ggo, consolidation
