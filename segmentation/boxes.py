"""Bounding boxes of masks, for working on the part of a volume that holds something."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every True voxel of ``mask``, grown by
    ``margin`` voxels on each side (one value, or one per axis) and clipped to the array;
    None when the mask is empty."""
    margins = [int(margin)] * mask.ndim if np.isscalar(margin) else [int(m) for m in margin]
    if len(margins) != mask.ndim:
        raise ValueError(f"margin {margin!r} does not match a {mask.ndim}-D mask")
    box = []
    for axis, (m, n) in enumerate(zip(margins, mask.shape)):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        if hit.size == 0:
            return None
        box.append(slice(max(0, int(hit[0]) - m), min(n, int(hit[-1]) + 1 + m)))
    return tuple(box)
