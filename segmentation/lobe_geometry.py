"""Shape checks of lobe boundaries: is a boundary a plane, or an axial cut? (numpy only)

Used by tests/test_lobes.py and scripts/evaluate_lobes.py to show that lobe boundaries are
not the straight cuts a viewer would show for a planar model:

- ``plane_residual_mm``: RMS distance (mm) of the boundary voxels between two groups of
  lobes to their least-squares plane (0 for a planar cut, several mm for a curved fissure).
- ``largest_axial_patch``: the largest connected patch of the boundary that lies exactly
  between two consecutive axial slices, as its area (mm^2) and as a fraction of the whole
  boundary's area (all voxel faces between the two groups). A boundary along an axial plane
  is one patch (fraction ~1); a tilted or curved surface breaks into terraces of about
  slice thickness / slope, each a small part of the surface.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def boundary_points_mm(labels: np.ndarray, a: set[int], b: set[int], spacing) -> np.ndarray:
    """(n, 3) mm coordinates (z, y, x) of the ``a`` voxels 6-adjacent to a ``b`` voxel."""
    in_a = np.isin(labels, list(a))
    in_b = np.isin(labels, list(b))
    near_b = ndi.binary_dilation(in_b)
    return np.argwhere(in_a & near_b) * np.asarray(spacing, float)


def plane_residual_mm(points: np.ndarray) -> float:
    """RMS distance of ``points`` to their least-squares plane (nan for < 10 points)."""
    if len(points) < 10:
        return float("nan")
    c = points - points.mean(axis=0)
    s = np.linalg.svd(c, full_matrices=False, compute_uv=False)
    return float(s[-1] / np.sqrt(len(points)))


def largest_axial_patch(labels: np.ndarray, a: set[int], b: set[int], spacing) -> tuple[float, float]:
    """(area mm^2, fraction of the boundary's face area) of the largest axial-face patch."""
    in_a = np.isin(labels, list(a))
    in_b = np.isin(labels, list(b))
    sz, sy, sx = spacing
    total = 0.0
    for axis, area in ((0, sy * sx), (1, sz * sx), (2, sz * sy)):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        f = (in_a[tuple(hi)] & in_b[tuple(lo)]) | (in_b[tuple(hi)] & in_a[tuple(lo)])
        total += f.sum() * area
        if axis == 0:
            faces = f
    best = 0
    for k in np.nonzero(faces.any(axis=(1, 2)))[0]:
        lab, n = ndi.label(faces[k])
        if n:
            best = max(best, int(np.bincount(lab.ravel())[1:].max()))
    best_mm2 = best * sy * sx
    return best_mm2, (best_mm2 / total if total else 0.0)
