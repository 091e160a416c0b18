"""segmentation.boxes.bounding_box: the box the lung, lobe, lesion and hilum code crop to."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.boxes import bounding_box


def test_box_margin_clipping_and_empty() -> None:
    mask = np.zeros((5, 10, 12), bool)
    assert bounding_box(mask) is None
    mask[2, 3, 4] = mask[3, 6, 11] = True
    assert bounding_box(mask) == (slice(2, 4), slice(3, 7), slice(4, 12))
    # one margin for every axis, clipped at the array's edges
    assert bounding_box(mask, margin=2) == (slice(0, 5), slice(1, 9), slice(2, 12))
    # one margin per axis
    assert bounding_box(mask, margin=(0, 1, 3)) == (slice(2, 4), slice(2, 8), slice(1, 12))
    assert mask[bounding_box(mask)].sum() == mask.sum()
    with pytest.raises(ValueError, match="does not match"):
        bounding_box(mask, margin=(1, 1))
