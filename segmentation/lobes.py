"""Five lung lobes from an HU volume and the left/right lung masks (no learned model, no labels).

Each lobe is what its lobar bronchus supplies; fissures decide where they are visible. The
heavy work runs on a working grid of about 1.5 mm in-plane and 2-2.5 mm between slices,
cropped to the lungs, and the labels are mapped back to the input grid by index. The volume
is in the canonical LPS layout (segmentation.types.Volume: x -> patient's left, y ->
posterior, z -> superior), so cranial is high z (``cranial_end="high"``, the default); an
array known to run caudally (``"low"``) is flipped internally, and only for arrays of unknown
orientation (``cranial_end=None``) is the cranial end detected (B.1).

A. Bronchial model (the default; slices <= ``MAX_AIRWAY_SLICE_MM``):
   1. segmentation.airways traces the airway tree from the trachea and names the lobar
      bronchi from the tree's topology and direction (right upper / middle / lower, left
      upper incl. lingula / lower); see that module.
   2. Geodesic assignment: on a ~``GEODESIC_MM`` grid, fast marching from each lobe's bronchial
      subtree through the lung, ``VESSEL_SPEEDUP`` times faster inside vessels (HU above
      ``VESSEL_HU``), so parenchyma beyond the traced bronchi goes to the lobe whose
      bronchovascular tree reaches it first; each voxel takes the lobe of the earliest arrival.
      The margin by which the earliest arrival wins is interpolated linearly onto the working
      grid, so the boundary (its zero set) shows no coarse-grid steps.
   3. Fissures as barriers: within ``BRONCHIAL_BAND_MM`` of these boundaries the Hessian
      sheetness (step 3 of B) is searched (slices <= ``MAX_FISSURE_SLICE_MM``), and a seeded
      watershed (markers = the lobes outside the band) floods the band with cost = the
      smoothed sheetness + a faint ridge on the bronchial boundary: the boundary moves onto a
      visible fissure, and stays on the bronchial boundary where none is visible.
   4. Each lobe keeps its largest connected piece (the rest goes to its nearest lobe).
   A lung whose lobar bronchi were not all identified falls back to B (with a note).
B. Geometric model with fissure search (the fallback; thick slices, no trachea, a tree that
   leaks or does not divide as expected):
   1. Orientation (only for ``cranial_end=None``, arrays of unknown orientation): which end
      of z is cranial is detected:
      near the apex a lung's axial cross-section is a compact blob filling most of its
      bounding box, near the base a thin crescent around the diaphragmatic dome, so the end
      whose slices have the higher area / bounding-box ratio is cranial (see
      ``detect_cranial_end``). A ratio between the ends under 1.3 is ambiguous and noted.
   2. Per lung, with H its cranio-caudal height and D its antero-posterior depth (robust
      percentiles of the mask):
      - major (oblique) fissure: in the sagittal plane the straight line from the posterior
        border at ``MAJOR_POSTERIOR_HEIGHT`` x H above the lowest lung point (about T4-T5) down
        to the anterior diaphragm, ``MAJOR_ANTERIOR_DEPTH`` x D behind the anterior border at
        ``MAJOR_ANTERIOR_HEIGHT`` x H; above/in front of it = upper lobe (and middle lobe on
        the right);
      - horizontal fissure (right): the axial plane at ``HORIZONTAL_HEIGHT`` x H above the base,
        only in front of the major fissure; above = upper lobe.
      The four constants were set so that the lobe volume fractions on one real chest CT
      (LIDC-IDRI-0001) match textbook fractions; none of the reference lobe label maps was
      used to set them.
   3. Fissure enhancement (only when slices are <= 2.5 mm thick): Hessian of the working-grid
      HU at sigma 1.5 mm; eigenvalues sorted by magnitude |l1| <= |l2| <= |l3|. A bright sheet
      has l3 << 0 and l1, l2 ~ 0, so sheetness = max(0, -l3) * exp(-(|l2|/|l3|)^2 / (2*0.5^2)),
      mapped to [0, 1) by 1 - exp(-(s / SHEET_SCALE)^2 / 2). Vessels and other dense tissue
      (HU above ``VESSEL_HU``, dilated by one voxel) are not searched but take the largest
      response of their neighbours (a vessel crossing a fissure must not open a hole in the
      flooding barrier); sheet fragments under ``MIN_SHEET_MM3`` are dropped; nothing outside
      ``BAND_MM`` of the geometric fissures is searched.
   4. Region growing: markers are the geometric lobes minus the fissure zone, and
      SimpleITK's MorphologicalWatershedFromMarkers floods the zone with cost = sheetness
      smoothed by a Gaussian of sigma 2.5 mm + a faint ridge on the geometric fissure.
   5. For each fissure the support is the fraction of its final boundary voxels (away from
      the pleura) whose sheetness, maximum over the 3x3x3 neighbourhood, is >=
      ``SUPPORT_SHEETNESS``; with support >= ``SUPPORT_FRACTION`` the fissure is "found",
      otherwise its boundary is the geometric plane.
C. Confidence: a lobe is "high" when it came from the bronchial model (method "bronchial") or
   every fissure that bounds it was found (method "fissure"), else "low" (method
   "geometric"); an empty lobe, a lung cut by the field of view or an ambiguous orientation
   also give "low". The notes say which path each lung took and why, and the per-fissure
   support.

Limits: the bronchial model needs the lobar bronchi to be air-filled and traceable (thin
slices, no mucus plugging or bronchus-filling consolidation at the hilum); where the traced
tree is sparse the boundary follows the vessels, which (veins especially) run between
segments and may cross an incomplete fissure; a dense lesion hides both fissure and vessels,
so across it the boundary is the geodesic one. The geometric fallback is a plane per fissure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from segmentation.airways import trace_airways
from segmentation.blocks import block_any, block_max, block_mean, pad_to_blocks, unblock
from segmentation.boxes import bounding_box
from segmentation.hilum import hilar_zone
from segmentation.types import LOBE_KEYS, Lobe, Volume

WORK_SPACING_MM = 1.5
MAX_FISSURE_SLICE_MM = 2.5
HESSIAN_SIGMA_MM = 1.5
SHEET_SCALE = 12.0  # HU/mm^2: sheet strength that maps to sheetness 0.39
VESSEL_HU = -450.0
PLEURA_MARGIN_MM = 4.0
BAND_MM = 20.0
PRIOR_RIDGE = 0.05
SUPPORT_SHEETNESS = 0.3
SUPPORT_FRACTION = 0.5
ORIENTATION_MIN_RATIO = 1.3

MAJOR_POSTERIOR_HEIGHT = 0.72
MAJOR_ANTERIOR_DEPTH = 0.10
MAJOR_ANTERIOR_HEIGHT = 0.36
HORIZONTAL_HEIGHT = 0.62
MIN_SHEET_MM3 = 150.0
GAP_CLOSE_MM = 10.0
MAX_AIRWAY_SLICE_MM = 3.0
GEODESIC_MM = 3.0
GEODESIC_STOP_MM = 2000.0
VESSEL_SPEEDUP = 2.0
BRONCHIAL_BAND_MM = 12.0
BRONCHIAL_Z_MM = 2.0  # working slice spacing (thinner slices are merged: speed)

LEFT_LOBES = (Lobe.LEFT_UPPER, Lobe.LEFT_LOWER)
RIGHT_LOBES = (Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE, Lobe.RIGHT_LOWER)


@dataclass
class LobeResult:
    """Lobe labels on the input Volume's grid.

    labels: uint8 (z, y, x), Lobe values inside the lungs, 0 elsewhere.
    confidence: per LOBE_KEYS value, "high" | "low" (see the module docstring for the rule).
    method: per LOBE_KEYS value, "bronchial" | "fissure" | "geometric": where the lobe's boundaries
        came from (A, B with fissures found, B without; see the module docstring).
    airway_lobes: the lobes whose lobar bronchus was identified in the traced airway tree.
    notes: quality remarks (thick slices, fissure support per fissure, orientation, FOV cut).
    fissure_support: per fissure ("left_major", "right_major", "right_horizontal") the
        fraction of its boundary on a visible fissure; None when fissures were not searched.
    cranial_end: "low" | "high": which end of z is towards the head (as used).
    hilum: bool (z, y, x), the hilar zone of segmentation.hilum (lung within 15 mm of the
        central bronchi of the traced airway tree), or None when no airway tree was traced.
    """

    labels: np.ndarray
    confidence: dict[str, str]
    method: dict[str, str]
    notes: list[str] = field(default_factory=list)
    fissure_support: dict[str, float | None] = field(default_factory=dict)
    cranial_end: str = "high"
    airway_lobes: list[str] = field(default_factory=list)
    hilum: np.ndarray | None = None


# ---------------------------------------------------------------------------------------
# working grid


@dataclass
class _Grid:
    """Block-averaged crop of the input: input index i maps to working index (i - lo) // f."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    f: tuple[int, int, int]
    spacing: tuple[float, float, float]


def _make_grid(spacing_in, mask: np.ndarray, margin_mm: float = 6.0,
               work_mm: tuple[float, float, float] = (WORK_SPACING_MM,) * 3) -> _Grid | None:
    f = tuple(max(1, int(round(w / s))) for w, s in zip(work_mm, spacing_in))
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    if any(i.size == 0 for i in idx):
        return None
    lo, hi = [], []
    for ax in range(3):
        m = int(np.ceil(margin_mm / spacing_in[ax]))
        a, b = max(0, idx[ax][0] - m), min(mask.shape[ax], idx[ax][-1] + 1 + m)
        n = int(np.ceil((b - a) / f[ax])) * f[ax]
        a = max(0, min(a, mask.shape[ax] - n)) if n <= mask.shape[ax] else a
        lo.append(a)
        hi.append(a + n)
    return _Grid(tuple(lo), tuple(hi), f, tuple(s * k for s, k in zip(spacing_in, f)))


def _reduce(arr: np.ndarray, g: _Grid, how: str) -> np.ndarray:
    # the grid's extent is a multiple of f; a crop cut short by the array's end is edge-padded
    # back to it (the next multiple of f)
    sub = pad_to_blocks(arr[g.lo[0]:g.hi[0], g.lo[1]:g.hi[1], g.lo[2]:g.hi[2]], g.f)
    if how == "mean":
        return block_mean(sub, g.f)
    return block_any(sub, g.f)


def _expand_box(labels_w: np.ndarray, g: _Grid, box: tuple[slice, slice, slice]) -> np.ndarray:
    """The input-grid labels inside ``box`` (0 where the working grid does not reach)."""
    shape = tuple(b.stop - b.start for b in box)
    out = np.zeros(shape, np.uint8)
    idx, dst = [], []
    for a, b in enumerate(box):
        i = np.arange(max(b.start, g.lo[a]), min(b.stop, g.hi[a]))
        idx.append((i - g.lo[a]) // g.f[a])
        dst.append(slice(i[0] - b.start, i[-1] + 1 - b.start) if i.size else slice(0, 0))
    if all(i.size for i in idx):
        out[tuple(dst)] = labels_w[np.ix_(*idx)]
    return out


# ---------------------------------------------------------------------------------------
# orientation and geometry


def _fill_ratio_profile(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: lung area and area / bounding-box area (0 where the slice is empty)."""
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    ratio = np.zeros_like(area)
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    for z in np.nonzero(area)[0]:
        ys, xs = np.nonzero(rows[z])[0], np.nonzero(cols[z])[0]
        ratio[z] = area[z] / ((ys[-1] - ys[0] + 1) * (xs[-1] - xs[0] + 1))
    return area, ratio


def detect_cranial_end(lung_left: np.ndarray, lung_right: np.ndarray, notes: list[str] | None = None) -> str:
    """"low" or "high": the end of z towards the head.

    In the 20 % of a lung's cranio-caudal extent at each end, the apex is a compact blob that
    fills most of its axial bounding box (fill ratio ~0.6-0.75), while the base is a thin
    crescent around the diaphragmatic dome and the costophrenic recesses (~0.05-0.3). The end
    whose mean fill ratio (both lungs) is higher is cranial; a ratio between the two ends
    under ORIENTATION_MIN_RATIO is ambiguous and noted. (The area profile alone is not
    reliable: the dome makes the bases taper over a longer distance than the apex.)
    """
    sums = np.zeros(2)
    counts = np.zeros(2)
    for mask in (lung_left, lung_right):
        area, ratio = _fill_ratio_profile(mask)
        zs = np.nonzero(area)[0]
        if zs.size < 5:
            continue
        k = max(2, int(round(0.2 * (zs[-1] - zs[0] + 1))))
        for e, sl in enumerate((slice(zs[0], zs[0] + k), slice(zs[-1] - k + 1, zs[-1] + 1))):
            sums[e] += ratio[sl].mean()
            counts[e] += 1
    if counts.min() == 0:
        if notes is not None:
            notes.append("orientation: lungs too short to tell the apex; assumed z increases cranially")
        return "high"
    low_fill, high_fill = sums / counts
    end = "high" if high_fill > low_fill else "low"
    ratio = max(low_fill, high_fill) / max(min(low_fill, high_fill), 1e-6)
    if notes is not None and ratio < ORIENTATION_MIN_RATIO:
        notes.append(f"orientation ambiguous (end fill-ratio {ratio:.2f}); took the {end} z end as cranial")
    return end


@dataclass
class _LungFrame:
    """mm coordinates of one lung: height above its base, depth behind its anterior border."""

    base_mm: float
    height_mm: float
    ant_mm: float
    depth_mm: float


def _lung_frame(zc_mm: np.ndarray, y_mm: np.ndarray, rel_span: tuple[float, float] | None,
                zc_first: float, zc_last: float) -> _LungFrame:
    if rel_span is None:
        base, top = np.percentile(zc_mm, [0.1, 99.9])
    else:  # the volume holds only part of the lung: rel_span = relative height of its two ends
        (h0, h1) = rel_span
        lo_mm, hi_mm = min(zc_first, zc_last), max(zc_first, zc_last)
        h = (hi_mm - lo_mm) / max(h1 - h0, 1e-3)
        base, top = lo_mm - h0 * h, lo_mm - h0 * h + h
    ant, post = np.percentile(y_mm, [1.0, 99.0])
    return _LungFrame(float(base), float(max(top - base, 1.0)), float(ant), float(max(post - ant, 1.0)))


def _major_distance(zc_mm, y_mm, fr: _LungFrame) -> np.ndarray:
    """Signed distance (mm) to the major fissure plane; > 0 on the upper(/middle) lobe side."""
    y0, z0 = fr.ant_mm + MAJOR_ANTERIOR_DEPTH * fr.depth_mm, fr.base_mm + MAJOR_ANTERIOR_HEIGHT * fr.height_mm
    y1, z1 = fr.ant_mm + fr.depth_mm, fr.base_mm + MAJOR_POSTERIOR_HEIGHT * fr.height_mm
    m = (z1 - z0) / (y1 - y0)
    return (zc_mm - (z0 + m * (y_mm - y0))) / np.sqrt(1.0 + m * m)


def _horizontal_distance(zc_mm, fr: _LungFrame) -> np.ndarray:
    """Signed distance (mm) to the horizontal fissure plane; > 0 on the upper lobe side."""
    return zc_mm - (fr.base_mm + HORIZONTAL_HEIGHT * fr.height_mm)


# ---------------------------------------------------------------------------------------
# fissure enhancement


def sheetness(hu: np.ndarray, spacing: tuple[float, float, float], where: np.ndarray,
              sigma_mm: float = HESSIAN_SIGMA_MM) -> np.ndarray:
    """Bright-sheet response in [0, 1) at the voxels of ``where`` (0 elsewhere); see docstring."""
    out = np.zeros(hu.shape, np.float32)
    if not where.any():
        return out
    sig = [max(sigma_mm, 0.5 * s) / s for s in spacing]
    img = hu.astype(np.float32)
    comp = {}
    for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        d = ndi.gaussian_filter(img, sig, order=order, mode="nearest", truncate=2.5)
        comp[i, j] = d[where] / (spacing[i] * spacing[j])
    n = comp[0, 0].size
    hm = np.empty((n, 3, 3), np.float32)
    for (i, j), v in comp.items():
        hm[:, i, j] = v
        hm[:, j, i] = v
    ev = np.linalg.eigvalsh(hm)
    order_ = np.argsort(np.abs(ev), axis=1)
    ev = np.take_along_axis(ev, order_, axis=1)
    l2, l3 = np.abs(ev[:, 1]), ev[:, 2]
    strength = np.maximum(0.0, -l3) * np.exp(-((l2 / np.maximum(np.abs(l3), 1e-6)) ** 2) / (2 * 0.5 ** 2))
    out[where] = 1.0 - np.exp(-((strength / SHEET_SCALE) ** 2) / 2.0)
    comps, n = ndi.label(out >= SUPPORT_SHEETNESS, structure=np.ones((3, 3, 3), bool))
    if n:
        sizes = np.bincount(comps.ravel()) * float(np.prod(spacing))
        small = sizes < MIN_SHEET_MM3
        small[0] = False
        out[small[comps]] = 0.0
    return out


def _watershed(cost: np.ndarray, markers: np.ndarray) -> np.ndarray:
    # quantised to uint16 (steps of 5e-5; ITK floods integer images about 4x faster)
    q = np.clip(np.round(cost * 20000.0), 0, 65535).astype(np.uint16)
    ws = sitk.MorphologicalWatershedFromMarkers(sitk.GetImageFromArray(q),
                                                sitk.GetImageFromArray(markers.astype(np.uint8)),
                                                markWatershedLine=False, fullyConnected=False)
    return sitk.GetArrayFromImage(ws).astype(np.uint8)


def _boundary_support(labels: np.ndarray, a: set[int], b: set[int], sheet_max: np.ndarray,
                      interior: np.ndarray) -> float | None:
    """Fraction of the a|b boundary voxels (on the a side, away from the pleura) on a fissure."""
    in_a = np.isin(labels, list(a))
    in_b = np.isin(labels, list(b))
    near_b = ndi.binary_dilation(in_b)
    bnd = in_a & near_b & interior
    n = int(bnd.sum())
    if n < 20:
        return None
    return float((sheet_max[bnd] >= SUPPORT_SHEETNESS).mean())


# ---------------------------------------------------------------------------------------
# one lung


def _one_lung(hu_w: np.ndarray | None, lung_w: np.ndarray, g: _Grid, cranial_sign: float,
              zc0: float, right: bool, rel_span, zc_ends: tuple[float, float]):
    """Labels on the working crop, per-lobe method and per-fissure support for one lung."""
    sz, sy, sx = g.spacing
    zc_axis = cranial_sign * (np.arange(lung_w.shape[0]) * sz) + zc0
    y_axis = np.arange(lung_w.shape[1]) * sy
    zz, yy, _ = np.nonzero(lung_w)
    fr = _lung_frame(zc_axis[zz], y_axis[yy], rel_span, *zc_ends)
    zc3 = zc_axis[:, None, None]
    y3 = y_axis[None, :, None]
    d_major = np.broadcast_to(_major_distance(zc3, y3, fr), lung_w.shape)
    d_h = np.broadcast_to(_horizontal_distance(zc3, fr), lung_w.shape) if right else None

    def geometric() -> np.ndarray:
        lab = np.zeros(lung_w.shape, np.uint8)
        upper = d_major > 0
        if right:
            lab[lung_w & ~upper] = Lobe.RIGHT_LOWER
            lab[lung_w & upper & (d_h > 0)] = Lobe.RIGHT_UPPER
            lab[lung_w & upper & (d_h <= 0)] = Lobe.RIGHT_MIDDLE
        else:
            lab[lung_w & upper] = Lobe.LEFT_UPPER
            lab[lung_w & ~upper] = Lobe.LEFT_LOWER
        return lab

    geo = geometric()
    lobes = RIGHT_LOBES if right else LEFT_LOBES
    fissures = ("right_major", "right_horizontal") if right else ("left_major",)
    if hu_w is None:
        return geo, {lb: "geometric" for lb in lobes}, {f: None for f in fissures}

    # fissure zone, pleura margin, vessels
    zone = np.abs(d_major) <= BAND_MM
    if right:
        zone = zone | ((np.abs(d_h) <= BAND_MM) & (d_major > -BAND_MM))
    depth = ndi.distance_transform_edt(lung_w, sampling=g.spacing)
    interior = depth > PLEURA_MARGIN_MM
    dense = ndi.binary_dilation(hu_w > VESSEL_HU) & lung_w
    sheet = sheetness(hu_w, g.spacing, lung_w & zone & ~dense)
    # a vessel crossing a fissure must not open a hole in the flooding barrier: dense voxels
    # take the largest response of their non-dense neighbours (5 voxels across)
    sheet[dense] = ndi.maximum_filter(sheet, size=5)[dense]

    # markers: geometric lobes outside the zone (shrink the zone for a lobe that vanishes)
    markers = np.zeros(lung_w.shape, np.uint8)
    for lb in lobes:
        for band in (BAND_MM, BAND_MM / 2, BAND_MM / 4, 0.0):
            far = np.abs(d_major) > band
            if right and lb != Lobe.RIGHT_LOWER:
                far = far & (np.abs(d_h) > band)
            m = (geo == lb) & far
            if m.sum() >= 30 or band == 0.0:
                break
        markers[m] = lb
    ridge = np.maximum(0.0, 1.0 - np.abs(d_major) / BAND_MM)
    if right:
        ridge = np.maximum(ridge, np.where(d_major > -BAND_MM, np.maximum(0.0, 1.0 - np.abs(d_h) / BAND_MM), 0.0))
    # the flood goes through any gap in a barrier: a Gaussian (sigma GAP_CLOSE_MM / 4) turns
    # the thin, holed sheet into a smooth ridge centred on the fissure whose gaps are shallow
    # saddles, so a leak only moves the boundary within the ridge's width
    barrier = ndi.gaussian_filter(sheet, [GAP_CLOSE_MM / 4.0 / s for s in g.spacing])
    cost = np.where(lung_w, barrier + PRIOR_RIDGE * ridge, 10.0).astype(np.float32)
    ws = _watershed(cost, markers)
    ws[~lung_w] = 0

    sheet_max = ndi.maximum_filter(sheet, size=3)
    support: dict[str, float | None] = {}
    if right:
        support["right_major"] = _boundary_support(ws, {Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE},
                                                   {Lobe.RIGHT_LOWER}, sheet_max, interior)
        support["right_horizontal"] = _boundary_support(ws, {Lobe.RIGHT_UPPER}, {Lobe.RIGHT_MIDDLE},
                                                        sheet_max, interior)
    else:
        support["left_major"] = _boundary_support(ws, {Lobe.LEFT_UPPER}, {Lobe.LEFT_LOWER}, sheet_max, interior)
    found = {k: (v is not None and v >= SUPPORT_FRACTION) for k, v in support.items()}

    if not right:
        if found["left_major"]:
            return ws, {lb: "fissure" for lb in lobes}, support
        return geo, {lb: "geometric" for lb in lobes}, support
    if not found["right_major"]:
        return geo, {lb: "geometric" for lb in lobes}, support
    if found["right_horizontal"]:
        return ws, {lb: "fissure" for lb in lobes}, support
    lab = ws.copy()
    upper_middle = (ws == Lobe.RIGHT_UPPER) | (ws == Lobe.RIGHT_MIDDLE)
    lab[upper_middle & (d_h > 0)] = Lobe.RIGHT_UPPER
    lab[upper_middle & (d_h <= 0)] = Lobe.RIGHT_MIDDLE
    return lab, {Lobe.RIGHT_UPPER: "geometric", Lobe.RIGHT_MIDDLE: "geometric",
                 Lobe.RIGHT_LOWER: "fissure"}, support


# ---------------------------------------------------------------------------------------
# bronchial model: each lobe is what its lobar bronchus supplies


def _block(arr: np.ndarray, f: tuple[int, int, int], how: str) -> np.ndarray:
    """Block-reduce ``arr`` by ``f`` (edge-padded): "any", "mean" or "max"."""
    reduce = {"any": block_any, "mean": block_mean, "max": block_max}[how]
    return reduce(pad_to_blocks(arr, f), f)


def _geodesic_lobes(lung_w: np.ndarray, hu_w: np.ndarray, seeds_w: np.ndarray, lobes,
                    spacing) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic Voronoi of the lobar seeds inside the lung on a ~GEODESIC_MM grid.

    Travel is ``VESSEL_SPEEDUP`` times faster inside vessels (HU > VESSEL_HU), so parenchyma
    far from the traced bronchi goes to the lobe whose vessel tree reaches it first (the
    pulmonary arteries run with the bronchi). Returns, on the working grid, the lobe of the
    earliest arrival and the margin (mm of travel) by which it won over the next lobe; the
    margin is interpolated linearly, so its zero set (the boundary) has no coarse-grid steps.
    """
    f = tuple(max(1, int(round(GEODESIC_MM / s))) for s in spacing)
    sp_c = tuple(s * k for s, k in zip(spacing, f))
    domain = _block(lung_w | (seeds_w > 0), f, "any")
    vessel = _block((hu_w > VESSEL_HU) & lung_w, f, "mean")
    seeds_c = _block(seeds_w, f, "max")
    speed = np.where(domain, 1.0 + VESSEL_SPEEDUP * vessel, 1e-4).astype(np.float32)
    img = sitk.GetImageFromArray(speed)
    img.SetSpacing(tuple(float(s) for s in sp_c[::-1]))
    arrival = []
    for lb in lobes:
        pts = np.argwhere(seeds_c == lb)
        fm = sitk.FastMarchingImageFilter()
        fm.SetTrialPoints([(int(x), int(y), int(z)) for z, y, x in pts])
        fm.SetStoppingValue(GEODESIC_STOP_MM)  # far beyond any path inside a lung
        arrival.append(np.minimum(sitk.GetArrayFromImage(fm.Execute(img)), GEODESIC_STOP_MM).astype(np.float32))
    t = np.stack(arrival)
    order = np.argsort(t, axis=0)
    best = np.take_along_axis(t, order[:1], axis=0)[0]
    second = np.take_along_axis(t, order[1:2], axis=0)[0]
    nearest = np.asarray(lobes, np.uint8)[order[0]]
    lab = unblock(nearest, f, lung_w.shape)
    # margin at block centres, linearly interpolated onto the working grid
    margin = ndi.zoom(second - best, f, order=1, mode="nearest", grid_mode=True)
    pad = [(0, max(0, n - m)) for n, m in zip(lung_w.shape, margin.shape)]
    margin = np.pad(margin, pad, mode="edge")[: lung_w.shape[0], : lung_w.shape[1], : lung_w.shape[2]]
    return lab, margin.astype(np.float32)


def _coarse_edt(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) to the nearest False voxel, on a grid of about 3 mm in-plane (speed)."""
    f = (1, *(max(1, int(round(3.0 / s))) for s in spacing[1:]))
    inside = ~_block(~mask, f, "any")
    d = ndi.distance_transform_edt(inside, sampling=[s * k for s, k in zip(spacing, f)]).astype(np.float32)
    return unblock(d, f, mask.shape)


def _keep_connected(lab: np.ndarray, lung_w: np.ndarray, lobes) -> np.ndarray:
    """Each lobe keeps its largest 26-connected piece; the rest goes to the nearest lobe."""
    out = lab.copy()
    for lb in lobes:
        comps, n = ndi.label(out == lb, structure=np.ones((3, 3, 3), bool))
        if n > 1:
            sizes = np.bincount(comps.ravel())
            sizes[0] = 0
            out[(comps > 0) & (comps != np.argmax(sizes))] = 0
    hole = lung_w & (out == 0)
    if hole.any():
        idx = ndi.distance_transform_edt(out == 0, return_distances=False, return_indices=True)
        out[hole] = out[tuple(i[hole] for i in idx)]
    return out


def _bronchial_lung(hu_w: np.ndarray, lung_w: np.ndarray, seeds_w: np.ndarray, spacing, right: bool,
                    search_fissures: bool):
    """Labels on the lung crop from the lobar seeds, refined onto visible fissures.

    Returns labels, per-fissure support (fraction of the boundary on a visible fissure).
    """
    lobes = RIGHT_LOBES if right else LEFT_LOBES
    prior, dist = _geodesic_lobes(lung_w, hu_w, seeds_w, lobes, spacing)
    # band around the prior boundaries (margin of the geodesic vote); fissures are searched
    # and the flood happens in it
    zone = lung_w & (dist <= BRONCHIAL_BAND_MM)
    sheet = np.zeros(lung_w.shape, np.float32)
    if search_fissures:
        dense = ndi.binary_dilation(hu_w > VESSEL_HU) & lung_w
        sheet = sheetness(hu_w, spacing, zone & ~dense)
        sheet[dense] = ndi.maximum_filter(sheet, size=5)[dense]
    markers = np.zeros(lung_w.shape, np.uint8)
    for lb in lobes:
        for band in (BRONCHIAL_BAND_MM, BRONCHIAL_BAND_MM / 2, BRONCHIAL_BAND_MM / 4, 0.0):
            m = (prior == lb) & (dist > band)
            if m.sum() >= 30 or band == 0.0:
                break
        markers[m] = lb
    ridge = np.maximum(0.0, 1.0 - dist / BRONCHIAL_BAND_MM)
    barrier = ndi.gaussian_filter(sheet, [GAP_CLOSE_MM / 4.0 / s for s in spacing]) if search_fissures else sheet
    cost = np.where(lung_w, barrier + PRIOR_RIDGE * ridge, 10.0).astype(np.float32)
    ws = _watershed(cost, markers)
    ws[~lung_w] = 0
    ws = _keep_connected(ws, lung_w, lobes)
    support: dict[str, float | None] = {}
    if search_fissures:
        sheet_max = ndi.maximum_filter(sheet, size=3)
        interior = _coarse_edt(lung_w, spacing) > PLEURA_MARGIN_MM
        if right:
            support["right_major"] = _boundary_support(ws, {Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE},
                                                       {Lobe.RIGHT_LOWER}, sheet_max, interior)
            support["right_horizontal"] = _boundary_support(ws, {Lobe.RIGHT_UPPER}, {Lobe.RIGHT_MIDDLE},
                                                            sheet_max, interior)
        else:
            support["left_major"] = _boundary_support(ws, {Lobe.LEFT_UPPER}, {Lobe.LEFT_LOWER}, sheet_max,
                                                      interior)
    else:
        support = ({"right_major": None, "right_horizontal": None} if right else {"left_major": None})
    return ws, support


# ---------------------------------------------------------------------------------------
# public


def segment_lobes(volume: Volume, lung_left: np.ndarray, lung_right: np.ndarray, *,
                  cranial_end: str | None = "high", use_fissures: bool = True,
                  use_airways: bool | None = None,
                  relative_height_span: tuple[float, float] | None = None) -> LobeResult:
    """Label the five lobes inside the given lung masks.

    volume: HU volume in the canonical LPS layout of segmentation.types.Volume (z toward
        Superior, y toward Posterior, x toward the patient's Left), as node.volume loads it.
    lung_left, lung_right: boolean masks on volume's grid (the patient's left / right lung).
    cranial_end: "high" (default: canonical, z increases cranially); "low" for an array
        known to run the other way; None detects it from the lungs' shape (only for arrays
        whose orientation is unknown, e.g. research scripts; the node never needs it).
    use_fissures: False skips the fissure search (geometric model only, e.g. without a CT).
    use_airways: trace the airway tree and use the bronchial model (A); default: as
        use_fissures (both need a real CT). False forces the geometric model (B).
    relative_height_span: for a volume that holds only a slab of the lungs, the relative
        cranio-caudal height in the lung (0 = base, 1 = apex) of its lowest and highest slice
        (mm-wise); by default each lung's own extent in the volume is its full height.
    """
    hu = volume.hu
    if lung_left.shape != hu.shape or lung_right.shape != hu.shape:
        raise ValueError(f"lung masks {lung_left.shape}/{lung_right.shape} do not match volume {hu.shape}")
    if cranial_end not in (None, "low", "high"):
        raise ValueError(f"cranial_end must be 'low', 'high' or None, got {cranial_end!r}")
    lung_left = lung_left.astype(bool, copy=False)
    lung_right = lung_right.astype(bool, copy=False)
    notes: list[str] = []
    if cranial_end is None:
        cranial_end = detect_cranial_end(lung_left, lung_right, notes)
    cranial_sign = 1.0 if cranial_end == "high" else -1.0

    thick = volume.spacing_mm[0] > MAX_FISSURE_SLICE_MM
    search = use_fissures and not thick
    if use_fissures and thick:
        notes.append(f"slices {volume.spacing_mm[0]:.2f} mm apart (> {MAX_FISSURE_SLICE_MM} mm): "
                     "fissures unreliable, not searched")
    elif not use_fissures:
        notes.append("fissure search off")

    if use_airways is None:
        use_airways = use_fissures
    tree, g_all, hilum = None, None, None
    if use_airways and volume.spacing_mm[0] > MAX_AIRWAY_SLICE_MM:
        notes.append(f"slices {volume.spacing_mm[0]:.2f} mm apart (> {MAX_AIRWAY_SLICE_MM} mm): "
                     "airway tree not traced, geometric lobe model used")
    elif use_airways:
        g_all = _make_grid(volume.spacing_mm, lung_left | lung_right,
                           work_mm=(BRONCHIAL_Z_MM, WORK_SPACING_MM, WORK_SPACING_MM))
        if g_all is not None:
            flip = slice(None, None, -1) if cranial_end == "low" else slice(None)
            hu_all = _reduce(hu, g_all, "mean")[flip]
            lw_all = _reduce(lung_left, g_all, "any")[flip]
            rw_all = _reduce(lung_right, g_all, "any")[flip]
            tree = trace_airways(hu_all, g_all.spacing, lw_all, rw_all)
            tree.lobar = tree.lobar[flip]
            hu_all, lw_all, rw_all = hu_all[flip], lw_all[flip], rw_all[flip]
            notes.extend(tree.notes)
            if tree.mask.any():
                zone_w = hilar_zone(tree.mask[flip], g_all.spacing)
                whole = tuple(slice(0, n) for n in hu.shape)
                hilum = _expand_box(zone_w.astype(np.uint8), g_all, whole).astype(bool)
                hilum &= lung_left | lung_right

    labels = np.zeros(hu.shape, np.uint8)
    method: dict[str, str] = {}
    support: dict[str, float | None] = {}
    bronchial_fissures: set[str] = set()
    for right, mask in ((False, lung_left), (True, lung_right)):
        lobes = RIGHT_LOBES if right else LEFT_LOBES
        side = "right" if right else "left"
        if not mask.any():
            notes.append(f"{side} lung mask empty: its lobes are empty")
            method.update({LOBE_KEYS[lb]: "geometric" for lb in lobes})
            continue
        _note_fov_cut(mask, side, notes)
        if tree is not None and all(lb in tree.identified for lb in lobes):
            lung_w = rw_all if right else lw_all
            seeds = np.where(np.isin(tree.lobar, lobes), tree.lobar, 0).astype(np.uint8)
            box = bounding_box(lung_w | (seeds > 0), margin=2)
            lab_c, sup = _bronchial_lung(hu_all[box], lung_w[box], seeds[box], g_all.spacing, right, search)
            lab_w = np.zeros(lung_w.shape, np.uint8)
            lab_w[box] = lab_c
            g = g_all
            meth = {lb: "bronchial" for lb in lobes}
            bronchial_fissures.update(sup)
        else:
            if tree is not None:
                notes.append(f"{side} lung: lobar bronchi not all identified, geometric lobe model used")
            g = _make_grid(volume.spacing_mm, mask, work_mm=(BRONCHIAL_Z_MM, WORK_SPACING_MM, WORK_SPACING_MM))
            lung_w = _reduce(mask, g, "any")
            hu_w = _reduce(hu, g, "mean") if search else None
            # cranio-caudal mm of working slice 0, in a frame shared by both lungs
            zc0 = cranial_sign * (g.lo[0] + (g.f[0] - 1) / 2.0) * volume.spacing_mm[0]
            zc_ends = (0.0, cranial_sign * (hu.shape[0] - 1) * volume.spacing_mm[0])
            lab_w, meth, sup = _one_lung(hu_w, lung_w, g, cranial_sign, zc0, right, relative_height_span,
                                         zc_ends)
        box = bounding_box(mask, margin=1)
        m = mask[box]
        full = _expand_box(lab_w, g, box)
        full[~m] = 0
        missing = m & (full == 0)
        if missing.any():  # voxels whose working block fell outside the working lung: nearest lobe
            idx = ndi.distance_transform_edt(full == 0, return_distances=False, return_indices=True)
            full[missing] = full[tuple(i[missing] for i in idx)]
        labels[box][m] = full[m]
        method.update({LOBE_KEYS[lb]: m for lb, m in meth.items()})
        support.update(sup)

    for name, s in support.items():
        if s is None:
            if search:
                notes.append(f"{name} fissure: boundary too small to measure support")
        elif name in bronchial_fissures:
            notes.append(f"{name} fissure: {100 * s:.0f}% of the boundary on a visible fissure "
                         "(elsewhere the bronchial tree decides)")
        else:
            verdict = "found" if s >= SUPPORT_FRACTION else "not found, geometric model used"
            notes.append(f"{name} fissure: {100 * s:.0f}% of the boundary on a visible fissure ({verdict})")
    cut = any("field of view" in n for n in notes)
    ambiguous = any(n.startswith("orientation") for n in notes)
    confidence = {}
    present = set()
    for mask in (lung_left, lung_right):
        if mask.any():
            present.update(np.unique(labels[bounding_box(mask)]).tolist())
    for lb, key in LOBE_KEYS.items():
        empty = lb not in present
        if empty:
            notes.append(f"{key} lobe empty")
        ok = method.get(key) in ("fissure", "bronchial") and not empty and not ambiguous and not cut
        confidence[key] = "high" if ok else "low"
    if not search:
        support = {k: None for k in ("left_major", "right_major", "right_horizontal")}
    return LobeResult(labels=labels, confidence=confidence, method=method, notes=notes,
                      fissure_support=support, cranial_end=cranial_end,
                      airway_lobes=sorted(LOBE_KEYS[lb] for lb in tree.identified) if tree is not None else [],
                      hilum=hilum)


def _note_fov_cut(mask: np.ndarray, side: str, notes: list[str]) -> None:
    area = mask.sum(axis=(1, 2))
    peak = area.max()
    for end, a in (("first", area[0]), ("last", area[-1])):
        if peak and a > 0.25 * peak:
            notes.append(f"{side} lung cut by the field of view at the {end} slice: lobe model extents are guesses")
