"""Synthetic COVID-19 pneumonia lesions blended into real, lesion-free lung CT (training data).

``synthesize_lesions(hu, lung, spacing_mm, rng, target_volume_ml)`` returns a copy of ``hu``
with lesions painted into the lung and a label map (0 background, 1 GGO, 2 consolidation).

Method (sizes in mm, so any voxel spacing works):

1. Foci: 1-6 seeds, both lungs when both are present (bilateral in ~70%), drawn with a
   strong preference for the periphery (distance to the lung border <= ~15 mm: subpleural)
   and a weaker one for the lower half of the volume (posterior-basal predominance is not
   modelled: hosts come in any orientation).
2. Shape: a field = sum of anisotropic Gaussian blobs at the seeds (radii 8-45 mm) modulated
   by smooth random noise (irregular, lobulated borders). The lesion is the ``n`` lung voxels
   with the highest field value, ``n = target_volume_ml / voxel volume`` (clipped to the lung),
   so the extent is exactly what is requested (a few ml to most of a lobe).
3. Pattern per lesion (one per call, drawn by ``pattern`` or at random):
   - ``ggo``: target HU uniform in -700..-450 with smooth variation, kept in -750..-350;
   - ``crazy_paving``: GGO plus a reticular network of thin interlobular-septum lines
     (+80..+200 HU on the level-set lines of a noise field);
   - ``consolidation``: GGO whose core (top 20-60% of the field) is consolidation,
     -100..+50 HU (also a "halo": dense core, GGO rim);
   - ``reversed_halo``: a GGO centre surrounded by a consolidation ring (atoll sign);
   - ``dense_consolidation`` (opt-in, not in the default ``PATTERNS``; see
     ``_dense_consolidation``): homogeneous consolidation (-60..+50 HU, little texture)
     against the pleura, preferring the dependent (posterior, +y) side, shaped as a
     subpleural band or a rounded/lobar mass, with branching air bronchograms, sharp or soft
     margins, and at most a thin GGO rim (absent in most draws).
4. Blending with the host: alpha = the lesion mask smoothed by ~1.5 mm (soft borders);
   out = host + alpha * max(target + noise - host, 0), i.e. the lesion only ever raises HU, so
   vessels and bronchial walls brighter than the lesion stay visible, and the added noise
   has the host's own noise level (std of its high-pass inside the lung).
5. Labels: voxels with alpha >= 0.5; 2 (consolidation) where the target was consolidation,
   1 (GGO) elsewhere. Everything stays inside ``lung``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

GGO_HU = (-750.0, -350.0)
GGO_TARGET_HU = (-700.0, -450.0)
CONSOLIDATION_HU = (-100.0, 50.0)
PATTERNS = ("ggo", "crazy_paving", "consolidation", "reversed_halo")  # the default draw
DENSE_HU = (-60.0, 50.0)
AIR_BRONCHOGRAM_HU = (-950.0, -800.0)
# the dense family (issue 6): homogeneous consolidation 0..60 HU (with a small margin below)
DENSE_FAMILY = ("dense_consolidation", "dependent", "lobar", "white_lung", "mixed")
ALL_PATTERNS = PATTERNS + DENSE_FAMILY
HOMOGENEOUS_HU = (-20.0, 60.0)
MIMICS = ("nodule", "calcified_granuloma", "dependent_density", "subpleural_line")


def _smooth_noise(shape, sigma_vox, rng) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    s = n.std()
    return n / s if s > 0 else n


def _host_noise_std(hu: np.ndarray, lung: np.ndarray) -> float:
    if not lung.any():
        return 20.0
    hp = hu.astype(np.float32) - ndi.gaussian_filter(hu.astype(np.float32), (0, 1.5, 1.5))
    v = hp[lung]
    mad = np.median(np.abs(v - np.median(v))) * 1.4826
    return float(np.clip(mad, 5.0, 80.0))


def _pick_seeds(lung: np.ndarray, spacing, n_foci: int, rng) -> list[tuple[int, int, int]]:
    depth = ndi.distance_transform_edt(lung, sampling=spacing)
    cand = np.argwhere(lung)
    d = depth[lung]
    w = np.where(d <= 15.0, 6.0, 1.0)  # subpleural preference
    # bilateral: split candidates by the lung's column centre of mass
    xc = cand[:, 2].mean()
    sides = [cand[:, 2] < xc, cand[:, 2] >= xc]
    both = all(s.sum() > 0 for s in sides) and rng.random() < 0.7
    seeds = []
    for i in range(n_foci):
        sel = sides[i % 2] if both else np.ones(len(cand), bool)
        p = w * sel
        k = rng.choice(len(cand), p=p / p.sum())
        seeds.append(tuple(int(c) for c in cand[k]))
    return seeds


def synthesize_lesions(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
    target_volume_ml: float,
    pattern: str | None = None,
    n_foci: int | None = None,
    patterns: tuple[str, ...] = PATTERNS,
    vessels_not_lesion: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint lesions of about ``target_volume_ml`` into ``lung`` of ``hu`` (z, y, x).

    Returns (hu_out float32, labels uint8 with 0 bg / 1 GGO / 2 consolidation). The labelled
    volume equals the requested one within the blending tolerance (it is capped at the lung
    volume). Deterministic for a given ``rng`` state. ``patterns`` is the set drawn from when
    ``pattern`` is None (default: the four original ones, so the default draw and random
    stream are unchanged; add ``"dense_consolidation"`` to include it). Axis 1 (y) is taken
    to point posterior (LPS arrays, radiological display) for the dependent preference.

    ``vessels_not_lesion``: GGO-labelled voxels whose *host* HU is already >= -350 (vessels,
    bronchial walls crossing the GGO) are labelled background, as the phantom's truth counts
    them (the node splits GGO / consolidation by HU, so a vessel inside a GGO mask would be
    counted as consolidation). Consolidation labels are not changed.
    """
    out, labels = _synthesize(hu, lung, spacing_mm, rng, target_volume_ml, pattern, n_foci, patterns)
    if vessels_not_lesion:
        labels[(labels == 1) & (np.asarray(hu) >= -350.0)] = 0
    return out, labels


def _synthesize(hu, lung, spacing_mm, rng, target_volume_ml, pattern, n_foci, patterns):
    if hu.shape != lung.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and lung {lung.shape} must be the same 3-D shape")
    for pt in ((pattern,) if pattern is not None else ()) + tuple(patterns):
        if pt not in ALL_PATTERNS:
            raise ValueError(f"unknown pattern {pt!r} (expected one of {ALL_PATTERNS})")
    hu = hu.astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    lung = lung.astype(bool)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    n_target = int(round(target_volume_ml / voxel_ml))
    if n_target <= 0 or lung.sum() == 0:
        return hu.copy(), labels
    n_target = min(n_target, int(lung.sum()))
    pattern = pattern or patterns[rng.integers(len(patterns))]
    if pattern == "dense_consolidation":
        return _dense_consolidation(hu, lung, np.asarray(spacing_mm, float), rng, n_target, n_foci)
    if pattern in ("dependent", "lobar", "white_lung", "mixed"):
        return _dense_family(pattern, hu, lung, np.asarray(spacing_mm, float), rng, n_target)
    n_foci = n_foci or int(rng.integers(1, 7))
    sp = np.asarray(spacing_mm, float)

    # 1-2. shape field
    seeds = _pick_seeds(lung, spacing_mm, n_foci, rng)
    zz, yy, xx = (np.arange(n, dtype=np.float32) * s for n, s in zip(hu.shape, sp))
    field = np.zeros(hu.shape, np.float32)
    per_focus_ml = target_volume_ml / n_foci
    r_base = np.clip((3 * per_focus_ml * 1000 / (4 * np.pi)) ** (1 / 3), 6.0, 60.0)
    for s in seeds:
        r = r_base * rng.uniform(0.7, 1.4, size=3)
        c = np.asarray(s) * sp
        g = (np.exp(-((zz - c[0]) ** 2) / (2 * r[0] ** 2))[:, None, None]
             * np.exp(-((yy - c[1]) ** 2) / (2 * r[1] ** 2))[None, :, None]
             * np.exp(-((xx - c[2]) ** 2) / (2 * r[2] ** 2))[None, None, :])
        field += g * rng.uniform(0.6, 1.0)
    lobulation = _smooth_noise(hu.shape, tuple(6.0 / s for s in sp), rng)
    field = field * (1.0 + 0.35 * lobulation) + 1e-4 * lobulation
    vals = field[lung]
    thr = np.partition(vals, len(vals) - n_target)[len(vals) - n_target]
    region = lung & (field >= thr)
    rank = np.zeros(hu.shape, np.float32)  # 0 at the border .. 1 at the centre
    rank[region] = (field[region] - thr) / max(float(field[region].max() - thr), 1e-6)

    # 3. target HU
    level = rng.uniform(*GGO_TARGET_HU)
    target = level + 60.0 * _smooth_noise(hu.shape, tuple(4.0 / s for s in sp), rng)
    target = np.clip(target, GGO_HU[0] + 20, GGO_HU[1] - 20)
    cons = np.zeros(hu.shape, bool)
    if pattern == "crazy_paving":
        net = _smooth_noise(hu.shape, tuple(3.0 / s for s in sp), rng)
        lines = np.abs(net) < 0.12
        target = np.where(lines, target + rng.uniform(80, 200), target)
        target = np.clip(target, GGO_HU[0] + 20, GGO_HU[1] - 20)
    elif pattern == "consolidation":
        core = rng.uniform(0.2, 0.6)
        cons = region & (rank >= 1.0 - core)
    elif pattern == "reversed_halo":
        cons = region & (rank > 0.08) & (rank < rng.uniform(0.3, 0.45))
    if cons.any():
        c_level = rng.uniform(*CONSOLIDATION_HU)
        c_t = c_level + 25.0 * _smooth_noise(hu.shape, tuple(3.0 / s for s in sp), rng)
        target = np.where(cons, np.clip(c_t, *CONSOLIDATION_HU), target)

    # 4. blend
    alpha = ndi.gaussian_filter(region.astype(np.float32), tuple(1.0 / s for s in sp))
    alpha = np.clip(alpha * 1.0, 0.0, 1.0) * lung
    noise = _host_noise_std(hu, lung) * rng.standard_normal(hu.shape).astype(np.float32)
    out = hu + alpha * np.maximum(target + noise - hu, 0.0)

    # 5. labels
    lesion = region & (alpha >= 0.5)
    labels[lesion] = 1
    labels[lesion & cons] = 2
    return out.astype(np.float32), labels


def _segment_mask(shape, sp, p0, p1, r0, r1) -> np.ndarray:
    """Voxels within a tapered tube (radius r0 at p0 .. r1 at p1, mm) around the segment."""
    lo = [max(0, int(np.floor((min(p0[a], p1[a]) - r0) / sp[a]))) for a in range(3)]
    hi = [min(shape[a], int(np.ceil((max(p0[a], p1[a]) + r0) / sp[a])) + 1) for a in range(3)]
    out = np.zeros(shape, bool)
    if any(high <= low for low, high in zip(lo, hi)):
        return out
    g = np.meshgrid(*[np.arange(lo[a], hi[a]) * sp[a] for a in range(3)], indexing="ij")
    q = np.stack(g, -1)
    d = np.asarray(p1) - np.asarray(p0)
    t = np.clip(((q - p0) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)
    dist = np.linalg.norm(q - (np.asarray(p0) + t[..., None] * d), axis=-1)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = dist <= r0 + (r1 - r0) * t
    return out


def _dense_consolidation(hu, lung, sp, rng, n_target: int, n_foci: int | None):
    """Homogeneous dense consolidation against the pleura (see the module docstring).

    1-3 foci; seeds within 10 mm of the lung border, 4x weight in the posterior (dependent)
    third of the lung. Shape: "band" (a field decaying with the distance to the pleura, so the
    lesion hugs the chest wall, thickness set by the volume) or "mass" (round/lobar Gaussian,
    little lobulation). Air bronchograms: 0-4 tapered branching tubes (radius 0.6-2 mm) from the
    lesion's deep side towards its pleural side, kept at the host's air HU and labelled
    consolidation (as radiologists paint them). Margins sharp (0.4 mm blur) or soft
    (0.8-1.8 mm; normalised convolution, so the pleural side stays dense). A thin GGO rim (1.5-4 mm, labelled GGO) in
    30% of draws (only when the core keeps >= 60% of the lesion).
    """
    labels = np.zeros(hu.shape, np.uint8)
    n_foci = min(n_foci or int(rng.integers(1, 4)), 3)
    # in-plane distance to the lung border (subpleural is an in-plane notion on axial CT;
    # thin slabs would otherwise make every voxel "subpleural" in z)
    depth = np.stack([ndi.distance_transform_edt(m, sampling=sp[1:]) if m.any() else np.zeros(m.shape)
                      for m in lung]).astype(np.float32)
    cand = np.argwhere(lung)
    d = depth[lung]
    ys = cand[:, 1]
    y_lo, y_hi = ys.min(), ys.max()
    posterior = ys >= y_lo + (y_hi - y_lo) * 2 / 3
    w = np.where(d <= 10.0, 1.0, 0.02) * np.where(posterior, 4.0, 1.0)
    zz, yy, xx = (np.arange(n, dtype=np.float32) * s for n, s in zip(hu.shape, sp))
    mode = "band" if rng.random() < 0.6 else "mass"
    voxel_ml = float(np.prod(sp)) / 1000.0
    r_base = float(np.clip((3 * n_target * voxel_ml / n_foci * 1000 / (4 * np.pi)) ** (1 / 3), 5.0, 60.0))
    # log-domain score (no underflow far from the seeds): best focus, minus depth for a band
    field = np.full(hu.shape, -np.inf, np.float32)
    seeds = []
    for _ in range(n_foci):
        k = rng.choice(len(cand), p=w / w.sum())
        c = cand[k] * sp
        seeds.append(c)
        r = r_base * rng.uniform(0.8, 1.25, size=3) * (1.6 if mode == "band" else 1.0)
        f = (-((zz - c[0]) ** 2) / (2 * r[0] ** 2))[:, None, None] \
            + (-((yy - c[1]) ** 2) / (2 * r[1] ** 2))[None, :, None] \
            + (-((xx - c[2]) ** 2) / (2 * r[2] ** 2))[None, None, :] + np.log(rng.uniform(0.7, 1.0))
        field = np.maximum(field, f.astype(np.float32))
    if mode == "band":
        field -= depth / rng.uniform(6.0, 15.0)
    lob = _smooth_noise(hu.shape, tuple(8.0 / s for s in sp), rng)
    field = field + rng.uniform(0.0, 0.3) * lob
    vals = field[lung]
    thr = np.partition(vals, len(vals) - n_target)[len(vals) - n_target]
    region = lung & (field >= thr)

    # target HU: homogeneous
    target = rng.uniform(*DENSE_HU) + 8.0 * _smooth_noise(hu.shape, tuple(4.0 / s for s in sp), rng)
    cons = region.copy()
    if rng.random() < 0.3:  # thin GGO rim
        rim_mm = rng.uniform(1.5, 4.0)
        inner = ndi.distance_transform_edt(region, sampling=sp) > rim_mm
        if inner.sum() > 0.6 * region.sum():
            cons = inner
            target = np.where(cons, target, rng.uniform(*GGO_TARGET_HU))

    # air bronchograms (kept at the host's own HU: the blend never lowers HU)
    air = np.zeros(hu.shape, bool)
    n_br = int(rng.integers(0, 5))
    reg_pts = np.argwhere(region)
    if n_br and len(reg_pts) > 20:
        dr = depth[region]
        deep = reg_pts[dr >= np.quantile(dr, 0.8)]
        for _ in range(n_br):
            p0 = deep[rng.integers(len(deep))] * sp
            p1 = seeds[int(rng.integers(len(seeds)))] + rng.normal(0, r_base * 0.5, 3)
            p1[0] = p0[0] + rng.normal(0, 3.0)  # mostly in-plane
            r0 = rng.uniform(1.0, 2.0)
            air |= _segment_mask(hu.shape, sp, p0, p1, r0, r0 * 0.5)
            mid = p0 + (p1 - p0) * rng.uniform(0.3, 0.6)
            p2 = mid + rng.normal(0, r_base * 0.6, 3)
            p2[0] = mid[0]
            air |= _segment_mask(hu.shape, sp, mid, p2, r0 * 0.7, r0 * 0.4)
        air &= region & (depth > 2.0)
        target = np.where(air, rng.uniform(*AIR_BRONCHOGRAM_HU), target)

    sig = rng.uniform(0.8, 1.8) if rng.random() < 0.5 else 0.4
    # normalised convolution: the margin is soft towards the lung, not towards the pleura
    # (a consolidation abutting the chest wall is dense right up to it)
    sg = tuple(sig / s for s in sp)
    lf = ndi.gaussian_filter(lung.astype(np.float32), sg)
    alpha = ndi.gaussian_filter(region.astype(np.float32), sg) / np.maximum(lf, 1e-3)
    alpha = np.clip(alpha, 0.0, 1.0) * lung
    noise = _host_noise_std(hu, lung) * rng.standard_normal(hu.shape).astype(np.float32)
    out = hu + alpha * np.maximum(target + noise - hu, 0.0)
    lesion = region & (alpha >= 0.5)
    labels[lesion] = 1
    labels[lesion & cons] = 2
    labels[air] = 0  # the bronchogram lumen is air, not consolidation (as the phantom's truth)
    return out.astype(np.float32), labels


# ---------------------------------------------------------------------------------------
# the dense family: dependent, lobar, white lung, mixed GGO + consolidation


def _inplane_depth(lung: np.ndarray, sp) -> np.ndarray:
    """Distance (mm) to the lung border within each axial slice."""
    return np.stack([ndi.distance_transform_edt(m, sampling=sp[1:]) if m.any() else np.zeros(m.shape)
                     for m in lung]).astype(np.float32)


def _air_tubes(region: np.ndarray, sp, rng, n: int) -> np.ndarray:
    """``n`` branching, tapered, mostly in-plane air-filled tubes inside ``region`` (kept
    >= 2 mm from its border so each lumen is surrounded by consolidation)."""
    air = np.zeros(region.shape, bool)
    inner = _inplane_depth(region, sp) > 2.0
    pts = np.argwhere(inner)
    if n <= 0 or len(pts) < 20:
        return air
    for _ in range(n):
        p0 = pts[rng.integers(len(pts))] * sp
        ang = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(12.0, 45.0)
        d = np.array([rng.normal(0, 0.15), np.sin(ang), np.cos(ang)]) * length
        p1 = p0 + d
        r0 = rng.uniform(0.8, 2.0)
        air |= _segment_mask(region.shape, sp, p0, p1, r0, r0 * 0.5)
        mid = p0 + d * rng.uniform(0.3, 0.7)
        a2 = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
        p2 = mid + np.array([0.0, np.sin(a2), np.cos(a2)]) * length * rng.uniform(0.3, 0.6)
        air |= _segment_mask(region.shape, sp, mid, p2, r0 * 0.7, r0 * 0.4)
    return air & inner


def _top_n(field: np.ndarray, lung: np.ndarray, n: int) -> np.ndarray:
    vals = field[lung]
    n = int(np.clip(n, 1, len(vals)))
    thr = np.partition(vals, len(vals) - n)[len(vals) - n]
    return lung & (field >= thr)


def _dense_family(pattern, hu, lung, sp, rng, n_target: int):
    """The dense patterns of issue 6 (see ``DENSE_FAMILY``; labels 2 = consolidation,
    1 = GGO, 0 elsewhere and in the air-bronchogram lumen):

    - ``dependent``: the posterior (dependent, +y) part of the lung, boundary towards the
      aerated lung irregular (smooth noise of 4-15 mm amplitude), homogeneous
      ``HOMOGENEOUS_HU``, an optional GGO transition zone on its anterior side (0-35%);
    - ``lobar``: the lung on one side of a random plane (a fissure-like straight, sharp
      border) with a little waviness, homogeneous, 0-10% GGO rim;
    - ``white_lung``: 80-100% of the lung whatever the requested volume: consolidation in
      its dependent 35-100%, GGO in the rest;
    - ``mixed``: 1-4 irregular foci anywhere (subpleural in half the draws), patchy
      consolidation (30-100% of the lesion, from a second noise field) within GGO.
    Air bronchograms (0-5 branching tubes at the host's air HU) in the consolidation of
    ``dependent``, ``lobar`` and ``white_lung`` in 75% of draws. Margins sharp (0.4 mm) or
    soft (0.8-1.6 mm) towards the aerated lung, dense right up to the pleura.
    """
    labels = np.zeros(hu.shape, np.uint8)
    zz, yy, xx = (np.arange(n, dtype=np.float32) * s for n, s in zip(hu.shape, sp))
    yy3 = np.broadcast_to(yy[None, :, None], hu.shape)
    lob = _smooth_noise(hu.shape, tuple(8.0 / s for s in sp), rng)
    n_lung = int(lung.sum())
    ggo_share = 0.0
    if pattern == "dependent":
        field = yy3 + rng.uniform(4.0, 15.0) * lob
        region = _top_n(field, lung, n_target)
        ggo_share = rng.uniform(0.0, 0.35) if rng.random() < 0.6 else 0.0
        rank_field = field
    elif pattern == "lobar":
        v = rng.normal(0, 1, 3)
        v[0] *= 0.5
        v /= np.linalg.norm(v)
        plane = zz[:, None, None] * v[0] + yy[None, :, None] * v[1] + xx[None, None, :] * v[2]
        field = plane + rng.uniform(0.5, 6.0) * lob
        region = _top_n(field, lung, n_target)
        ggo_share = rng.uniform(0.0, 0.1) if rng.random() < 0.4 else 0.0
        rank_field = field
    elif pattern == "white_lung":
        n_target = max(n_target, int(rng.uniform(0.8, 1.0) * n_lung))
        field = rng.uniform(0.0, 2.0) * lob + rng.uniform(0.0, 0.05) * yy3
        region = _top_n(field, lung, n_target)
        ggo_share = 1.0 - rng.uniform(0.35, 1.0)
        rank_field = yy3 + rng.uniform(4.0, 15.0) * lob  # dependent part is the dense one
    else:  # mixed
        depth = _inplane_depth(lung, sp)
        cand = np.argwhere(lung)
        sub = rng.random() < 0.5
        w = np.where(depth[lung] <= 15.0, 6.0, 1.0) if sub else np.ones(len(cand))
        n_foci = int(rng.integers(1, 5))
        r_base = float(np.clip((3 * n_target * np.prod(sp) / 1000.0 / n_foci * 1000 / (4 * np.pi)) ** (1 / 3),
                               8.0, 60.0))
        field = np.full(hu.shape, -np.inf, np.float32)
        for _ in range(n_foci):
            c = cand[rng.choice(len(cand), p=w / w.sum())] * sp
            r = r_base * rng.uniform(0.7, 1.4, size=3)
            f = (-((zz - c[0]) ** 2) / (2 * r[0] ** 2))[:, None, None] \
                + (-((yy - c[1]) ** 2) / (2 * r[1] ** 2))[None, :, None] \
                + (-((xx - c[2]) ** 2) / (2 * r[2] ** 2))[None, None, :]
            field = np.maximum(field, f.astype(np.float32))
        field = field + rng.uniform(0.1, 0.5) * lob
        region = _top_n(field, lung, n_target)
        ggo_share = 1.0 - rng.uniform(0.3, 1.0)
        rank_field = _smooth_noise(hu.shape, tuple(rng.uniform(3.0, 8.0) / s for s in sp), rng)

    # consolidation = the part of the region with the highest rank_field, GGO the rest
    cons = region.copy()
    if ggo_share > 0.02:
        cons = _top_n(np.where(region, rank_field, -np.inf), region, int(round((1 - ggo_share) * region.sum())))
    target = rng.uniform(*HOMOGENEOUS_HU) + 8.0 * _smooth_noise(hu.shape, tuple(4.0 / s for s in sp), rng)
    target = np.clip(target, HOMOGENEOUS_HU[0] - 20.0, HOMOGENEOUS_HU[1] + 20.0)
    g_t = rng.uniform(*GGO_TARGET_HU) + 40.0 * _smooth_noise(hu.shape, tuple(4.0 / s for s in sp), rng)
    g_t = np.clip(g_t, GGO_HU[0] + 20, GGO_HU[1] - 20)
    target = np.where(cons, target, g_t)
    air = np.zeros(hu.shape, bool)
    if pattern != "mixed" and rng.random() < 0.75:
        air = _air_tubes(cons, sp, rng, int(rng.integers(1, 6)))
        target = np.where(air, rng.uniform(*AIR_BRONCHOGRAM_HU), target)

    sig = rng.uniform(0.8, 1.6) if rng.random() < 0.5 else 0.4
    sg = tuple(sig / s for s in sp)
    lf = ndi.gaussian_filter(lung.astype(np.float32), sg)
    alpha = ndi.gaussian_filter(region.astype(np.float32), sg) / np.maximum(lf, 1e-3)
    alpha = np.clip(alpha, 0.0, 1.0) * lung
    noise = _host_noise_std(hu, lung) * rng.standard_normal(hu.shape).astype(np.float32)
    # the air-bronchogram lumen is set to air (the blend never lowers HU elsewhere)
    out = np.where(air, np.minimum(hu, target + noise), hu + alpha * np.maximum(target + noise - hu, 0.0))
    lesion = region & (alpha >= 0.5)
    labels[lesion] = 1
    labels[lesion & cons] = 2
    labels[air] = 0
    return out.astype(np.float32), labels


# ---------------------------------------------------------------------------------------
# normal-lung mimics: dense things that are NOT pneumonia (labelled background)


def add_mimics(hu: np.ndarray, lung: np.ndarray, spacing_mm, rng: np.random.Generator,
               kinds: tuple[str, ...] | None = None) -> np.ndarray:
    """Paint normal findings that must not be called lesion into ``lung`` (labels stay 0).

    kinds (default: a random non-empty subset of ``MIMICS``):
    - ``nodule``: 1-3 solid spheres, diameter 4-18 mm, -30..+80 HU, sharp smooth border
      (a solitary compact nodule is not pneumonia);
    - ``calcified_granuloma``: 1-2 spheres, diameter 2-8 mm, +200..+800 HU;
    - ``dependent_density``: the normal anterior-posterior gravity gradient, up to +40..+180
      HU towards the posterior (+y) lung, never above -680 HU (normal dependent lung);
    - ``subpleural_line``: a thin (1-2.5 mm) curvilinear band 2-6 mm inside the posterior
      pleura, -300..0 HU, 15-60% of its length (plate-like dependent atelectasis).
    Returns the new HU (float32); outside ``lung`` nothing changes.
    """
    hu = hu.astype(np.float32).copy()
    lung = lung.astype(bool)
    if not lung.any():
        return hu
    sp = np.asarray(spacing_mm, float)
    if kinds is None:
        kinds = tuple(k for k in MIMICS if rng.random() < 0.5) or (MIMICS[int(rng.integers(len(MIMICS)))],)
    for k in kinds:
        if k not in MIMICS:
            raise ValueError(f"unknown mimic {k!r} (expected one of {MIMICS})")
    zz, yy, xx = (np.arange(n, dtype=np.float32) * s for n, s in zip(hu.shape, sp))
    cand = np.argwhere(lung)
    ys = cand[:, 1]
    y_lo, y_hi = float(ys.min() * sp[1]), float(ys.max() * sp[1])
    for k in kinds:
        if k in ("nodule", "calcified_granuloma"):
            n = int(rng.integers(1, 4 if k == "nodule" else 3))
            for _ in range(n):
                c = cand[rng.integers(len(cand))] * sp
                r = rng.uniform(2.0, 9.0) if k == "nodule" else rng.uniform(1.0, 4.0)
                level = rng.uniform(-30.0, 80.0) if k == "nodule" else rng.uniform(200.0, 800.0)
                d = np.sqrt(((zz - c[0]) ** 2)[:, None, None] + ((yy - c[1]) ** 2)[None, :, None]
                            + ((xx - c[2]) ** 2)[None, None, :])
                a = np.clip((r - d) / 0.6 + 0.5, 0.0, 1.0) * lung
                hu = hu + a * np.maximum(level - hu, 0.0)
        elif k == "dependent_density":
            amp = rng.uniform(40.0, 180.0)
            start = y_lo + (y_hi - y_lo) * rng.uniform(0.3, 0.7)
            ramp = np.clip((yy - start) / max(y_hi - start, 1.0), 0.0, 1.0) ** rng.uniform(1.0, 2.5)
            add = amp * np.broadcast_to(ramp[None, :, None], hu.shape)
            hu = np.where(lung, np.where(hu < -680.0, np.minimum(hu + add, -680.0), hu), hu)
        elif k == "subpleural_line":
            depth = _inplane_depth(lung, sp)
            d0, t = rng.uniform(2.0, 6.0), rng.uniform(1.0, 2.5)
            seg = _smooth_noise(hu.shape, tuple(10.0 / s for s in sp), rng)
            frac = rng.uniform(0.15, 0.6)
            keep = seg > np.quantile(seg, 1.0 - frac)
            post = np.broadcast_to((yy >= y_lo + (y_hi - y_lo) * 0.6)[None, :, None], hu.shape)
            band = lung & (depth >= d0) & (depth < d0 + t) & post & keep
            hu = np.where(band, np.maximum(hu, rng.uniform(-300.0, 0.0)), hu)
    return hu
