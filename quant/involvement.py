"""Pneumonia, not nodules: which lesion components count toward lobe involvement.

The lobe score (0-5), the CT score (0-25) and the number of involved lobes describe the
extent of pneumonia (COVID-19 / viral pneumonia: ground glass, crazy paving, consolidation).
A solitary pulmonary nodule or a calcified granuloma is another finding, and the lesion mask
may hold one (a lesion model sees "dense focus in the lung"). Each 3-D connected component of
the lesion mask (26-connectivity) is therefore classified, and only the ``pneumonia``
components count for lobe scores, the CT score and involved lobes. Lesion volumes and
percents (and the SEG) keep every lesion voxel; what was excluded is listed in
measurements.json (``excluded_lesions``) and in the SR's quality remarks.

Rules, in order (sizes in mm, so anisotropic voxels are handled):

1. ``calcified``: at least ``CALCIFIED_FRACTION`` (50 %) of the component's voxels are above
   ``CALCIFIED_MIN_HU`` (+200 HU). Pneumonia never reaches that density (consolidation is
   about -100..+100 HU, +150 with contrast); calcified granulomas, calcified nodes and
   contrast-filled vessels do. Any size.
2. ``speck``: equivalent-sphere diameter below ``SPECK_DIAMETER_MM`` (4 mm, 0.034 ml). Below
   the size a reader scores as an opacity (the smallest nodule category of the Fleischner
   guidelines starts at 6 mm) and mostly mask noise.
3. ``nodule``: a compact, isolated, nodule-sized focus, all of: equivalent diameter at most
   ``NODULE_MAX_DIAMETER_MM`` (30 mm: above it a focal lesion is a mass, and a pneumonic
   patch of that size is scored); elongation (longest / shortest principal axis of the
   component's second moments) at most ``NODULE_MAX_ELONGATION`` (2.0; pneumonic GGO is
   patchy, band-like or subpleural-crescentic); filling at least ``NODULE_MIN_FILL`` (0.55)
   of its moment-equivalent ellipsoid (a solid, round focus fills ~0.9-1.0, a crescent or a
   branching patch much less); and no other lesion voxel within ``ISOLATION_MM`` (10 mm) of
   it (pneumonia is multifocal and confluent; a nodule sits alone in aerated lung); specks
   (rule 2) do not count as other lesion here: they are mask noise, and thinner slices give
   more of them (on LIDC-IDRI-0001 interpolated to 1.25 mm, a 2-voxel speck within 10 mm
   of its 21 mm nodule made the nodule "pneumonia"; plan:
   segmentation/model_card/candidates/speck_isolation.plan.md). These
   are excluded only when there are at most ``MAX_SOLITARY_NODULES`` (4) of them: many
   compact foci are read as multifocal opacities and all count (then a note says so).
4. ``small_focus``: a focus of any shape whose *cluster* is under
   ``SMALL_FOCUS_DIAMETER_MM`` (10 mm equivalent diameter, 0.52 ml). A cluster is the
   components that lie within ``ISOLATION_MM`` (10 mm) of one another, chained; its size is
   their summed volume. A sub-centimetre opacity, or a sub-centimetre group of specks, alone
   in aerated lung is a micronodule, a vessel or bronchial-wall segment, or mask noise, not
   the patchy GGO / consolidation the CT score grades (on 2.5 mm slices such foci span 2-4
   slices, so their shape figures are not reliable enough for rule 3). Any number of them.
   A small focus in the cluster of a larger patch counts with it.
5. everything else is ``pneumonia``.

Limits: a single round pneumonic focus (e.g. an early "round pneumonia" or a reversed-halo
lesion) under 30 mm alone in the lungs is excluded as a nodule; a nodule that touches a
pneumonic patch counts as pneumonia. Both are rare against what the score measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from segmentation.boxes import bounding_box

CALCIFIED_MIN_HU = 200.0
CALCIFIED_FRACTION = 0.5
SPECK_DIAMETER_MM = 4.0
NODULE_MAX_DIAMETER_MM = 30.0
NODULE_MAX_ELONGATION = 2.0
NODULE_MIN_FILL = 0.55
ISOLATION_MM = 10.0
MAX_SOLITARY_NODULES = 4
SMALL_FOCUS_DIAMETER_MM = 10.0

KINDS = ("calcified", "speck", "nodule", "small_focus", "pneumonia")


@dataclass(frozen=True)
class LesionComponent:
    """One connected lesion component and how it was classified (``kind`` in KINDS)."""

    kind: str
    volume_ml: float
    equivalent_diameter_mm: float
    elongation: float
    ellipsoid_fill: float
    calcified_fraction: float
    isolated: bool
    centroid_zyx: tuple[int, int, int]


@dataclass(frozen=True)
class Involvement:
    """``counted``: lesion voxels that count toward lobe involvement (a subset of the lesion).
    ``components``: every component that was excluded (kind != "pneumonia"), largest first.
    ``notes``: remarks (e.g. many compact foci kept as multifocal)."""

    counted: np.ndarray
    excluded: list[LesionComponent]
    n_components: int
    notes: list[str]


def classify_lesions(hu: np.ndarray, lesion: np.ndarray,
                     spacing_mm: tuple[float, float, float]) -> Involvement:
    """Classify the connected components of ``lesion`` (see the module docstring)."""
    if hu.shape != lesion.shape:
        raise ValueError(f"hu {hu.shape} and lesion {lesion.shape} differ in shape")
    lesion = lesion.astype(bool, copy=False)
    box = bounding_box(lesion)
    if box is None:
        return Involvement(lesion.copy(), [], 0, [])
    # everything happens in the lesion's bounding box (the same components, in the same
    # order, and the same figures: coordinates are taken on the whole grid)
    found = _classify_in_box(hu[box], lesion[box], spacing_mm, tuple(s.start for s in box))
    counted = np.zeros(lesion.shape, bool)
    counted[box] = found.counted
    return Involvement(counted, found.excluded, found.n_components, found.notes)


def _classify_in_box(hu: np.ndarray, lesion: np.ndarray, spacing_mm, offset: tuple[int, ...]) -> Involvement:
    """classify_lesions on a box of the volume whose first voxel is ``offset`` on the whole
    grid, holding every lesion voxel (at least one)."""
    labels, n = ndi.label(lesion, structure=np.ones((3, 3, 3), bool))
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    idx = np.nonzero(labels)
    lab = labels[idx]
    count = np.bincount(lab, minlength=n + 1).astype(np.float64)
    calcified = np.bincount(lab, weights=(hu[idx] > CALCIFIED_MIN_HU), minlength=n + 1)
    coords = [(idx[a] + offset[a]).astype(np.float64) * spacing[a] for a in range(3)]
    mean = [np.bincount(lab, weights=c, minlength=n + 1) / np.maximum(count, 1) for c in coords]
    cov = np.zeros((n + 1, 3, 3))
    for a in range(3):
        da = coords[a] - mean[a][lab]
        for b in range(a, 3):
            db = coords[b] - mean[b][lab]
            cov[:, a, b] = cov[:, b, a] = np.bincount(lab, weights=da * db, minlength=n + 1)
    cov /= np.maximum(count, 1)[:, None, None]
    # a voxel is a box, not a point: add its own second moment so single voxels are not flat
    cov += np.diag(spacing ** 2 / 12.0)[None]
    eig = np.clip(np.linalg.eigvalsh(cov), 1e-9, None)          # ascending
    semi = np.sqrt(5.0 * eig)                                    # solid-ellipsoid semi-axes
    ellipsoid_ml = 4.0 / 3.0 * np.pi * semi.prod(axis=1) / 1000.0
    volume_ml = count * voxel_ml
    diameter = (6.0 * volume_ml * 1000.0 / np.pi) ** (1.0 / 3.0)
    elongation = semi[:, 2] / semi[:, 0]
    fill = volume_ml / np.maximum(ellipsoid_ml, 1e-12)
    calc_frac = calcified / np.maximum(count, 1)

    kind = np.array(["pneumonia"] * (n + 1), dtype=object)
    kind[calc_frac >= CALCIFIED_FRACTION] = "calcified"
    speck = (diameter < SPECK_DIAMETER_MM) & (kind == "pneumonia")
    kind[speck] = "speck"
    compact = ((kind == "pneumonia") & (diameter <= NODULE_MAX_DIAMETER_MM)
               & (elongation <= NODULE_MAX_ELONGATION) & (fill >= NODULE_MIN_FILL))
    compact[0] = False
    small = (kind == "pneumonia") & (diameter < SMALL_FOCUS_DIAMETER_MM)
    small[0] = False
    # clusters: components within ISOLATION_MM of each other (each grown by half of it)
    near = _within(lesion, spacing, ISOLATION_MM / 2.0)
    clusters, _ = ndi.label(near, structure=np.ones((3, 3, 3), bool))
    cluster_of = np.zeros(n + 1, np.int64)
    cluster_of[lab] = clusters[idx]
    cluster_ml = np.bincount(cluster_of[1:], weights=volume_ml[1:], minlength=int(cluster_of.max()) + 1)
    members = np.bincount(cluster_of[1:], minlength=int(cluster_of.max()) + 1)
    small_cluster = np.zeros(n + 1, bool)
    small_cluster[1:] = (6.0 * cluster_ml[cluster_of[1:]] * 1000.0 / np.pi) ** (1.0 / 3.0) < SMALL_FOCUS_DIAMETER_MM
    # a small component is isolated when its cluster is itself; a nodule candidate is
    # checked exactly (distance to any other lesion voxel)
    isolated = np.zeros(n + 1, bool)
    isolated[1:] = members[cluster_of[1:]] == 1
    objects = ndi.find_objects(labels)
    pad = np.ceil(ISOLATION_MM / spacing).astype(int)
    # a speck near a candidate does not break its isolation: it is mask noise (rule 2), and
    # thinner slices give more of them, so counting them made the rule depend on the spacing
    not_counted_as_other = speck.copy()
    not_counted_as_other[0] = True
    for i in np.flatnonzero(compact & ~small):
        sl = objects[i - 1]
        box = tuple(slice(max(0, s.start - p), min(dim, s.stop + p))
                    for s, p, dim in zip(sl, pad, labels.shape))
        sub = labels[box]
        others = ~not_counted_as_other[sub] & (sub != i)
        if not others.any():
            isolated[i] = True
            continue
        dist = ndi.distance_transform_edt(sub != i, sampling=spacing)
        isolated[i] = not (others & (dist <= ISOLATION_MM)).any()
    nodules = np.flatnonzero(compact & isolated & ~small)
    notes = []
    if nodules.size > MAX_SOLITARY_NODULES:
        notes.append(f"{nodules.size} compact isolated lesion foci (> {MAX_SOLITARY_NODULES}): "
                     "read as multifocal opacities, all counted toward involvement")
    else:
        kind[nodules] = "nodule"
    kind[np.flatnonzero(small & small_cluster)] = "small_focus"

    counted_ids = np.flatnonzero(kind == "pneumonia")
    keep = np.zeros(n + 1, bool)
    keep[counted_ids] = True
    keep[0] = False
    counted = keep[labels]
    excluded = []
    for i in np.flatnonzero(kind != "pneumonia"):
        if i == 0:
            continue
        excluded.append(LesionComponent(
            kind=str(kind[i]), volume_ml=float(volume_ml[i]),
            equivalent_diameter_mm=float(diameter[i]), elongation=float(elongation[i]),
            ellipsoid_fill=float(fill[i]), calcified_fraction=float(calc_frac[i]),
            isolated=bool(isolated[i]),
            centroid_zyx=tuple(int(round(mean[a][i] / spacing[a])) for a in range(3))))
    excluded.sort(key=lambda c: -c.volume_ml)
    return Involvement(counted, excluded, int(n), notes)


def _within(mask: np.ndarray, spacing: np.ndarray, radius_mm: float,
            slab: int = 24) -> np.ndarray:
    """Voxels within ``radius_mm`` of ``mask`` (computed inside its bounding box + radius).

    The distance transform runs on slabs of ``slab`` slices, each with the slices within the
    radius above and below it: any mask voxel within the radius of a slab voxel lies in that
    extended slab, so the result is exact, and the transform's working memory (about 20 bytes
    a voxel) is that of one slab rather than of the whole box. In-plane each slab's transform
    covers only the box of that extended slab's mask voxels grown by the radius (nothing
    farther can be within it), which is most of the time on sparse lesions."""
    spacing = np.asarray(spacing, dtype=np.float64)
    pad = np.ceil(radius_mm / spacing).astype(int) + 1
    out = np.zeros(mask.shape, bool)
    box = bounding_box(mask, margin=pad)
    if box is None:
        return out
    (z0, z1), yx = (box[0].start, box[0].stop), box[1:]
    for start in range(z0, z1, slab):
        stop = min(z1, start + slab)
        lo, hi = max(z0, start - pad[0]), min(z1, stop + pad[0])
        part = mask[lo:hi, yx[0], yx[1]]
        inner = bounding_box(part, margin=(0, pad[1], pad[2]))
        if inner is None:
            continue
        ys, xs = inner[1], inner[2]
        near = ndi.distance_transform_edt(~part[:, ys, xs], sampling=spacing) <= radius_mm
        y0, x0 = yx[0].start + ys.start, yx[1].start + xs.start
        out[start:stop, y0:y0 + near.shape[1], x0:x0 + near.shape[2]] = near[start - lo:stop - lo]
    return out
