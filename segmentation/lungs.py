"""Left and right lung masks by adaptive thresholding and morphology (no learned model).

Method (all sizes in mm, so anisotropic voxels are handled; heavy work on a working grid of
about 1.5 mm in-plane and >= 2 mm between slices, then mapped back):

1. Body: the largest 3-D component of HU > -500, holes filled slice by slice. Air outside
   the body (and the couch) is thereby excluded.
2. Threshold: Otsu's threshold of the HU histogram inside the body (-1024..+400 HU), clamped
   to [-700, -250] HU. Air-filled lung = body & HU < threshold.
3. Airways: the trachea is the longest vertical run of small (80-700 mm^2), round, air-filled
   2-D components near the body's midline. The airway tree is grown from it in 3-D on the
   smoothed image below -950 HU, lowering the threshold in 25 HU steps while the tree
   "explodes" (> 350 ml). The grown airways are removed from the lung. Cranial is high z
   (the canonical LPS orientation of segmentation.types.Volume; nothing is guessed).
4. Left/right: the two largest remaining air components (the patient's left lung is the one
   at higher x: canonical LPS, x toward the patient's Left). If only one large component exists, the lungs touch (anterior
   junction): it is eroded (up to 10 mm) until it splits and voxels go to the nearest
   eroded seed; failing that it is split at the midline column. Both fallbacks add a note.
5. Dense lung: per lung, the convex hulls of the air-filled lung in every axial and every
   coronal plane are taken (the coronal hull follows the chest wall's curvature across a
   subpleural lesion, where the axial chord would cut it short), and
   the non-air tissue inside it (-600..+200 HU: vessels, bronchial walls, consolidation
   touching the chest wall) is added, except (a) what lies between the two lungs on the same
   image row (the mediastinum, heart and hilum) and (b) 3-D components of the addition whose
   caudal face rests mostly on non-lung tissue (the liver / spleen under the diaphragmatic
   dome, which shows up as an island ringed by lung in axial slices). The airway lumen is
   removed again at the end.

Limits: consolidation that replaces the whole outer contour of a lung in a slice, or lies
against the mediastinum, is not recovered (the hull cannot reach it); hilar vessels are cut at
the lungs' medial border; a small stomach/bowel gas bubble is never taken as lung, but a lung
that is split into several pieces only keeps pieces of >= 2% of its volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from segmentation.blocks import block_mean, pad_to_blocks, unblock
from segmentation.boxes import bounding_box

BODY_MIN_HU = -500.0
THRESHOLD_CLAMP_HU = (-700.0, -250.0)
AIRWAY_START_HU = -950.0
AIRWAY_MAX_ML = 350.0
DENSE_ADD_HU = (-600.0, 200.0)
_SLICE_ONLY = np.zeros((3, 3, 3), bool)
_SLICE_ONLY[1] = ndi.generate_binary_structure(2, 1)


@dataclass
class LungMasks:
    """Boolean (z, y, x) masks on the input grid; notes are quality remarks."""

    left: np.ndarray
    right: np.ndarray
    threshold_hu: float = float("nan")
    airway: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------
# grid helpers


def _factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    fz = max(1, int(round(2.0 / spacing[0]))) if spacing[0] < 1.5 else 1
    fxy = max(1, int(round(1.5 / spacing[1])))
    return fz, fxy, fxy


def _downsample(hu: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Block means over ``f`` voxels (edge-padded to a multiple of ``f``), float32."""
    a = hu.astype(np.float32, copy=False)
    if f == (1, 1, 1):
        return a
    return block_mean(pad_to_blocks(a, f), f)


def _upsample(mask: np.ndarray, f: tuple[int, int, int], shape) -> np.ndarray:
    return mask if f == (1, 1, 1) else unblock(mask, f, shape)


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (axial): background not connected to the slice border.

    Worked in the mask's bounding box grown by one voxel in-plane: everything outside that box
    is background joined to the slice border, so the holes inside are the same (and the
    labelling touches a fraction of the volume)."""
    mask = np.asarray(mask, bool)
    box = bounding_box(mask, margin=(0, 1, 1))
    if box is None:
        return mask.copy()
    sub = mask[box]
    background, n = ndi.label(~sub, structure=_SLICE_ONLY)
    border = np.concatenate([background[:, 0, :].ravel(), background[:, -1, :].ravel(),
                             background[:, :, 0].ravel(), background[:, :, -1].ravel()])
    outside = np.zeros(n + 1, bool)
    outside[border] = True
    outside[0] = False
    out = mask.copy()
    out[box] = ~outside[background]
    return out


def _largest_components(mask: np.ndarray, n: int, structure=None) -> list[np.ndarray]:
    labels, count = ndi.label(mask, structure=structure)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:n]
    return [labels == (i + 1) for i in order]


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(-1024.0, 400.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


# ---------------------------------------------------------------------------------------
# steps


def _body_mask(hu: np.ndarray) -> np.ndarray:
    dense = hu > BODY_MIN_HU
    dense = ndi.binary_opening(dense, structure=_SLICE_ONLY)
    comps = _largest_components(dense, 1)
    if not comps:
        return np.zeros(hu.shape, bool)
    return fill_holes_2d(comps[0])


def _find_trachea(air: np.ndarray, body: np.ndarray, spacing) -> np.ndarray | None:
    """Mask of the trachea candidates forming the longest vertical run (None if not found)."""
    pix_mm2 = spacing[1] * spacing[2]
    labels, _ = ndi.label(air, structure=_SLICE_ONLY)
    objects = ndi.find_objects(labels)
    xs = np.nonzero(body.any(axis=(0, 1)))[0]
    if xs.size == 0:
        return None
    mid_x = (xs[0] + xs[-1]) / 2.0
    per_slice: dict[int, list[tuple[int, float, float]]] = {}
    for lab, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        area = comp.sum() * pix_mm2
        if not 80.0 <= area <= 700.0:
            continue
        h = (sl[1].stop - sl[1].start) * spacing[1]
        w = (sl[2].stop - sl[2].start) * spacing[2]
        if area < 0.55 * h * w or max(h, w) > 2.0 * min(h, w):
            continue
        _, cy, cx = ndi.center_of_mass(comp)
        cx_abs = cx + sl[2].start
        if abs(cx_abs - mid_x) * spacing[2] > 35.0:
            continue
        per_slice.setdefault(sl[0].start, []).append((lab, cy + sl[1].start, cx_abs))
    best: list[int] = []
    for z0 in sorted(per_slice):
        for cand in per_slice[z0]:
            run = [cand[0]]
            prev = cand
            z = z0 + 1
            while z in per_slice:
                nxt = [c for c in per_slice[z]
                       if np.hypot((c[1] - prev[1]) * spacing[1], (c[2] - prev[2]) * spacing[2]) < 6.0]
                if not nxt:
                    break
                prev = nxt[0]
                run.append(prev[0])
                z += 1
            if len(run) > len(best):
                best = run
    if len(best) * spacing[0] < 20.0:
        return None
    return np.isin(labels, best)


def _grow_airways(smooth: np.ndarray, body: np.ndarray, seeds: np.ndarray, voxel_ml: float) -> np.ndarray:
    threshold = AIRWAY_START_HU
    grown = seeds
    while threshold > -1020.0:
        candidate = (smooth < threshold) & body
        labels, _ = ndi.label(candidate | seeds)
        ids = np.unique(labels[seeds])
        grown = np.isin(labels, ids[ids > 0])
        if grown.sum() * voxel_ml <= AIRWAY_MAX_ML:
            return grown
        threshold -= 25.0
    return seeds


def _split_lungs(lung_air: np.ndarray, spacing, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    comps = _largest_components(lung_air, 6)
    if not comps:
        empty = np.zeros(lung_air.shape, bool)
        return empty, empty.copy()
    sizes = [c.sum() for c in comps]
    if len(comps) >= 2 and sizes[1] >= 0.15 * sizes[0]:
        a, b = comps[0], comps[1]
        extra = comps[2:]
    else:
        a, b = _split_touching(comps[0], spacing, notes)
        extra = comps[1:]
    xa = np.nonzero(a)[2].mean() if a.any() else 0.0
    xb = np.nonzero(b)[2].mean() if b.any() else 0.0
    left, right = (a, b) if xa > xb else (b, a)
    total = left.sum() + right.sum()
    split_x = (np.nonzero(left)[2].min() + np.nonzero(right)[2].max()) / 2.0 if left.any() and right.any() else None
    for comp, size in zip(extra, sizes[len(sizes) - len(extra):]):
        if size < 0.02 * total or split_x is None:
            continue
        if np.nonzero(comp)[2].mean() > split_x:
            left = left | comp
        else:
            right = right | comp
    return left, right


def _split_touching(mask: np.ndarray, spacing, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    idx = [np.nonzero(mask.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1))]
    box = tuple(slice(max(0, i[0] - 1), i[-1] + 2) for i in idx)
    a, b = _split_touching_box(mask[box], spacing, notes)
    out_a = np.zeros(mask.shape, bool)
    out_b = np.zeros(mask.shape, bool)
    out_a[box], out_b[box] = a, b
    return out_a, out_b


def _split_touching_box(mask: np.ndarray, spacing, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    dist = ndi.distance_transform_edt(mask, sampling=spacing)
    for radius in (2.0, 4.0, 6.0, 8.0, 10.0):
        seeds = _largest_components(dist > radius, 2)
        if len(seeds) == 2 and seeds[1].sum() >= 0.15 * seeds[0].sum():
            markers = np.zeros(mask.shape, np.int8)
            markers[seeds[0]] = 1
            markers[seeds[1]] = 2
            _, idx = ndi.distance_transform_edt(markers == 0, sampling=spacing, return_indices=True)
            nearest = markers[idx[0], idx[1], idx[2]]
            notes.append(f"lungs touch: split by erosion ({radius:g} mm) and nearest seed")
            return mask & (nearest == 1), mask & (nearest == 2)
    xs = np.nonzero(mask)[2]
    mid = int(round(np.median(xs)))
    cols = np.arange(mask.shape[2])[None, None, :]
    notes.append("lungs touch and erosion did not separate them: split at the midline column (fallback)")
    return mask & (cols < mid), mask & (cols >= mid)


def _hull_2d(mask2d: np.ndarray) -> np.ndarray:
    pts = np.argwhere(mask2d)
    if len(pts) < 3:
        return mask2d.copy()
    lo = pts.min(axis=0)
    hi = pts.max(axis=0) + 1
    try:
        hull = ConvexHull(pts.astype(np.float64))
    except QhullError:
        return mask2d.copy()
    yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]]
    inside = np.ones(yy.shape, bool)
    for a, b, c in hull.equations:
        inside &= a * yy + b * xx + c <= 0.5
    out = np.zeros_like(mask2d)
    out[lo[0]:hi[0], lo[1]:hi[1]] = inside
    return out


def _between_lungs(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per slice and row, the columns strictly between the right lung and the left lung."""
    nz, ny, nx = left.shape
    cols = np.arange(nx)
    has_r = right.any(axis=2)
    has_l = left.any(axis=2)
    r_max = np.where(has_r, nx - 1 - np.argmax(right[:, :, ::-1], axis=2), -1).astype(np.float32)
    l_min = np.where(has_l, np.argmax(left, axis=2), nx).astype(np.float32)
    mid = np.full(nz, nx / 2.0, np.float32)
    for k in range(nz):
        if has_r[k].any() and has_l[k].any():
            mid[k] = (r_max[k][has_r[k]].max() + l_min[k][has_l[k]].min()) / 2.0
    r_max = np.where(has_r, r_max, mid[:, None])
    l_min = np.where(has_l, l_min, mid[:, None])
    return (cols[None, None, :] > r_max[:, :, None]) & (cols[None, None, :] < l_min[:, :, None])


def _dense_additions(hu: np.ndarray, left: np.ndarray, right: np.ndarray,
                     cranial_up: bool) -> tuple[np.ndarray, np.ndarray]:
    """(left additions, right additions): see step 5 of the module docstring."""
    hulls = []
    for side in (left, right):
        hull = np.zeros(left.shape, bool)
        for k in np.nonzero(side.any(axis=(1, 2)))[0]:
            hull[k] |= _hull_2d(side[k])
        for j in np.nonzero(side.any(axis=(0, 2)))[0]:      # coronal planes
            hull[:, j, :] |= _hull_2d(side[:, j, :])
        hulls.append(hull)
    hull = hulls[0] | hulls[1]
    lung = left | right
    add = hull & ~lung & (hu >= DENSE_ADD_HU[0]) & (hu <= DENSE_ADD_HU[1])
    add &= ~_between_lungs(left, right)
    labels, count = ndi.label(add)
    if count == 0:
        return add, add.copy()
    # caudal neighbour of each voxel
    caudal_lab = np.zeros_like(labels)
    caudal_lung = np.zeros(lung.shape, bool)
    if cranial_up:
        caudal_lab[1:], caudal_lung[1:] = labels[:-1], lung[:-1]
    else:
        caudal_lab[:-1], caudal_lung[:-1] = labels[1:], lung[1:]
    face = add & (caudal_lab != labels)
    n_lung = np.bincount(labels[face & caudal_lung], minlength=count + 1)
    n_out = np.bincount(labels[face & ~caudal_lung], minlength=count + 1)
    keep = n_out <= n_lung
    keep[0] = False
    kept = keep[labels]
    return kept & hulls[0], kept & ~hulls[0]


def segment_lungs(volume) -> LungMasks:
    """Segment the left and right lungs of ``volume`` (segmentation.types.Volume)."""
    notes: list[str] = []
    full_shape = volume.hu.shape
    f = _factors(volume.spacing_mm)
    spacing = tuple(s * k for s, k in zip(volume.spacing_mm, f))
    hu = _downsample(volume.hu, f)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    body = _body_mask(hu)
    if not body.any():
        empty = np.zeros(full_shape, bool)
        return LungMasks(empty, empty.copy(), notes=["no body found: nothing above -500 HU"])
    threshold = float(np.clip(_otsu(hu[body]), *THRESHOLD_CLAMP_HU))
    air = body & (hu < threshold)

    smooth = ndi.gaussian_filter(hu, sigma=(0.5, 1.0, 1.0))
    trachea = _find_trachea(air, body, spacing)
    airway = np.zeros(hu.shape, bool)
    cranial_up = True  # canonical LPS (segmentation.types.Volume): z increases cranially
    if trachea is None:
        notes.append("trachea not found: airways not removed")
    else:
        airway = _grow_airways(smooth, body, trachea, voxel_ml)
    airway_margin = ndi.binary_dilation(airway, structure=ndi.generate_binary_structure(3, 1))
    lung_air = air & ~airway_margin
    lung_air = ndi.binary_opening(lung_air, structure=_SLICE_ONLY)

    left, right = _split_lungs(lung_air, spacing, notes)
    if not left.any() or not right.any():
        notes.append("fewer than two lungs found")
    left_add, right_add = _dense_additions(hu, left, right, cranial_up)
    add = left_add | right_add
    left = left | left_add
    right = right | right_add
    left &= ~airway
    right &= ~airway

    if f != (1, 1, 1):
        left, right, airway = _refine(volume.hu, threshold, f, left, right, airway, add)
    return LungMasks(left=left, right=right, threshold_hu=threshold, airway=airway, notes=notes)


def airway_mask(volume) -> tuple[np.ndarray, list[str]]:
    """The airway tree of ``volume`` on its grid (steps 1-3 of the module docstring: trachea
    found, grown below -950 HU) and notes; an empty mask and a note when no trachea is found.
    Used by the lung network engine to remove the trachea and main bronchi."""
    full_shape = volume.hu.shape
    f = _factors(volume.spacing_mm)
    spacing = tuple(s * k for s, k in zip(volume.spacing_mm, f))
    hu = _downsample(volume.hu, f)
    body = _body_mask(hu)
    if not body.any():
        return np.zeros(full_shape, bool), ["no body found: airways not removed"]
    threshold = float(np.clip(_otsu(hu[body]), *THRESHOLD_CLAMP_HU))
    air = body & (hu < threshold)
    trachea = _find_trachea(air, body, spacing)
    if trachea is None:
        return np.zeros(full_shape, bool), ["trachea not found: airways not removed"]
    smooth = ndi.gaussian_filter(hu, sigma=(0.5, 1.0, 1.0))
    airway = _grow_airways(smooth, body, trachea, float(np.prod(spacing)) / 1000.0)
    if f != (1, 1, 1):
        airway = _upsample(airway, f, full_shape)
    return airway, []


def _refine(hu_full, threshold, f, left, right, airway, add):
    """Map working-grid masks to the input grid; the boundary band follows the full threshold."""
    shape = hu_full.shape
    out = []
    air_full = hu_full < threshold
    airway_full = _upsample(airway, f, shape)
    add_full = _upsample(add, f, shape)
    for mask in (left, right):
        inner = ndi.binary_erosion(mask)
        band = ndi.binary_dilation(mask) & ~inner
        full = _upsample(inner, f, shape) | (_upsample(band, f, shape) & (air_full | add_full))
        out.append(full & ~airway_full)
    both = out[0] & out[1]
    out[1] &= ~both
    return out[0], out[1], airway_full
