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
   - ``reversed_halo``: a GGO centre surrounded by a consolidation ring (atoll sign).
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
PATTERNS = ("ggo", "crazy_paving", "consolidation", "reversed_halo")


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
) -> tuple[np.ndarray, np.ndarray]:
    """Paint lesions of about ``target_volume_ml`` into ``lung`` of ``hu`` (z, y, x).

    Returns (hu_out float32, labels uint8 with 0 bg / 1 GGO / 2 consolidation). The labelled
    volume equals the requested one within the blending tolerance (it is capped at the lung
    volume). Deterministic for a given ``rng`` state.
    """
    if hu.shape != lung.shape or hu.ndim != 3:
        raise ValueError(f"hu {hu.shape} and lung {lung.shape} must be the same 3-D shape")
    if pattern is not None and pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r} (expected one of {PATTERNS})")
    hu = hu.astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    lung = lung.astype(bool)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    n_target = int(round(target_volume_ml / voxel_ml))
    if n_target <= 0 or lung.sum() == 0:
        return hu.copy(), labels
    n_target = min(n_target, int(lung.sum()))
    pattern = pattern or PATTERNS[rng.integers(len(PATTERNS))]
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
