"""Disease painted into real, lesion-free lung CT: training data for the lung network.

``paint_disease(hu, right, left, spacing_mm, rng)`` returns a copy of ``hu`` with one to three
pathology patterns painted in, and the new right/left lung masks and the effusion mask.
The lung is the pleural-cavity parenchyma whatever fills it, so every pattern below stays
lung in the label, except pleural effusion, which is fluid in the pleural space and is taken
out of the lung label (the lung it displaces is compressed and painted denser).

Arrays are (z, y, x) in the project's canonical orientation: y increases toward the
patient's posterior, which is the dependent side of a supine patient (gravity: +y). All
sizes are in mm; shapes are drawn per slice in-plane (smooth noise also varies along z, so a
volume gets a coherent 3-D shape and a single slice works with z = 1).

Patterns (``PATTERNS``):
- ``dependent_consolidation``: the posterior 15-60% of a lung (per slice, by row), with an
  irregular (noise-perturbed) anterior border, homogeneous -40..+60 HU, air bronchograms;
- ``lobar_consolidation``: the lung on one side of an oblique fissure-like line (10-70% of
  the lung), dense, irregular border, air bronchograms;
- ``diffuse_ggo``: patchy to confluent ground glass (-700..-450 HU) over 40-100% of a lung;
- ``crazy_paving``: GGO with a reticular network of septal lines (+100..+250 HU above it);
- ``white_lung``: >= 90% of a lung dense (-150..+50 HU, consolidation and dense GGO mixed),
  with air bronchograms: the outline must come from the chest wall, not from air;
- ``atelectasis``: a thin dependent band (5-25 mm) of collapsed lung, 0..+60 HU, convex border;
- ``emphysema``: low-attenuation patches (-1000..-960 HU) and thin-walled cysts (5-30 mm);
- ``effusion``: fluid (0..+25 HU) layering in the posterior pleural space below a horizontal
  level, its meniscus rising along the chest wall; the lung beside it is compressed
  (-450..+20 HU within 4-18 mm of the fluid). Effusion voxels leave the lung label.

Blending: dense and ground-glass patterns only raise HU (out = host + alpha * max(target +
noise - host, 0), alpha the region smoothed by 0.4-1.5 mm), so brighter vessels stay;
emphysema only lowers it; effusion replaces it. Noise has the host's own level.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

PATTERNS = ("dependent_consolidation", "lobar_consolidation", "diffuse_ggo", "crazy_paving",
            "white_lung", "atelectasis", "emphysema", "effusion")
DENSE_HU = (-40.0, 60.0)
GGO_HU = (-700.0, -450.0)
EFFUSION_HU = (0.0, 25.0)
AIR_HU = (-980.0, -850.0)


def _noise(shape, sp, sigma_mm: float, rng) -> np.ndarray:
    sig = tuple(sigma_mm / s if n > 1 else 0.0 for n, s in zip(shape, sp))
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sig, mode="reflect")
    s = float(n.std())
    return n / s if s > 0 else n


def _host_noise(hu: np.ndarray, lung: np.ndarray) -> float:
    if not lung.any():
        return 15.0
    hp = hu - ndi.gaussian_filter(hu, (0, 1.5, 1.5))
    v = hp[lung]
    return float(np.clip(np.median(np.abs(v - np.median(v))) * 1.4826, 5.0, 60.0))


def _inplane_blur(mask: np.ndarray, sp, sigma_mm: float) -> np.ndarray:
    return ndi.gaussian_filter(mask.astype(np.float32), (0, sigma_mm / sp[1], sigma_mm / sp[2]))


def _rows(shape) -> np.ndarray:
    return np.arange(shape[1], dtype=np.float32)[None, :, None]


def _row_extent(side: np.ndarray):
    """Per slice (z,) min and max row of ``side`` (nan where the slice has none)."""
    has = side.any(axis=2)
    ny = side.shape[1]
    idx = np.arange(ny, dtype=np.float32)[None, :]
    lo = np.where(has.any(1), np.where(has, idx, np.inf).min(1), np.nan)
    hi = np.where(has.any(1), np.where(has, idx, -np.inf).max(1), np.nan)
    return lo.astype(np.float32), hi.astype(np.float32)


def _raise(out, region, target, sp, rng, sigma_mm, lung, noise_sd):
    alpha = np.clip(_inplane_blur(region, sp, sigma_mm), 0, 1) * lung
    noise = noise_sd * rng.standard_normal(out.shape).astype(np.float32)
    return out + alpha * np.maximum(target + noise - out, 0.0)


def _bronchograms(region: np.ndarray, sp, rng, n: int) -> np.ndarray:
    """Branching air-filled tubes (r 0.8-2 mm) inside ``region``, away from its border."""
    air = np.zeros(region.shape, bool)
    if n == 0 or region.sum() < 30:
        return air
    depth = np.stack([ndi.distance_transform_edt(m, sampling=sp[1:]) if m.any() else np.zeros(m.shape)
                      for m in region])
    pts = np.argwhere(depth > 3.0)
    if len(pts) == 0:
        return air
    yy, xx = np.mgrid[0:region.shape[1], 0:region.shape[2]]
    yy, xx = yy * sp[1], xx * sp[2]
    for _ in range(n):
        z, y0, x0 = pts[rng.integers(len(pts))]
        p = np.array([y0 * sp[1], x0 * sp[2]], float)
        ang = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.8, 2.0)
        for _seg in range(int(rng.integers(2, 5))):
            length = rng.uniform(8.0, 30.0)
            q = p + length * np.array([np.sin(ang), np.cos(ang)])
            d = q - p
            t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
            dist = np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))
            zs = slice(max(0, z - 1), z + 2) if region.shape[0] > 1 and rng.random() < 0.5 else slice(z, z + 1)
            air[zs] |= (dist <= r)[None]
            p, r = q, max(0.6, r * 0.75)
            ang += rng.normal(0, 0.6)
    return air & (depth > 2.0)


def _dependent(side, sp, rng, frac_range, irregular_mm):
    lo, hi = _row_extent(side)
    frac = rng.uniform(*frac_range)
    level = hi - frac * (hi - lo)  # (z,)
    wobble = irregular_mm / sp[1] * _noise(side.shape, sp, rng.uniform(6, 15), rng)
    return side & (_rows(side.shape) > level[:, None, None] + wobble)


def _lobar(side, sp, rng):
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:side.shape[1], 0:side.shape[2]].astype(np.float32)
    proj = (np.sin(ang) * yy * sp[1] + np.cos(ang) * xx * sp[2])[None]
    proj = proj + rng.uniform(2, 8) * _noise(side.shape, sp, rng.uniform(5, 12), rng)
    vals = proj[side]
    if vals.size == 0:
        return side.copy()
    thr = np.quantile(vals, 1.0 - rng.uniform(0.1, 0.7))
    return side & (proj >= thr)


def _field_region(side, sp, rng, cover, sigma_mm):
    f = _noise(side.shape, sp, sigma_mm, rng)
    vals = f[side]
    if vals.size == 0:
        return side.copy()
    return side & (f >= np.quantile(vals, 1.0 - cover))


def _paint_one(pattern, out, side, lung, sp, rng, noise_sd, eff):
    """Paint ``pattern`` into ``side``; may add to ``eff`` (effusion). Returns out."""
    tex = _noise(out.shape, sp, rng.uniform(2, 5), rng)
    if pattern in ("dependent_consolidation", "lobar_consolidation", "white_lung", "atelectasis"):
        if pattern == "dependent_consolidation":
            region = _dependent(side, sp, rng, (0.15, 0.6), rng.uniform(2, 10))
        elif pattern == "lobar_consolidation":
            region = _lobar(side, sp, rng)
        elif pattern == "white_lung":
            region = _field_region(side, sp, rng, rng.uniform(0.9, 1.0), 20.0)
        else:
            lo, hi = _row_extent(side)
            band = rng.uniform(5, 25) / sp[1]
            region = side & (_rows(side.shape) > (hi - band)[:, None, None]
                             + 2.0 / sp[1] * _noise(side.shape, sp, 10.0, rng))
        if pattern == "white_lung":
            base = rng.uniform(-150, 50)
            target = base + 60.0 * _noise(out.shape, sp, rng.uniform(4, 10), rng)
        elif pattern == "atelectasis":
            target = rng.uniform(0, 60) + 6.0 * tex
        else:
            target = rng.uniform(*DENSE_HU) + 10.0 * tex
        sig = 0.4 if rng.random() < 0.5 else rng.uniform(0.8, 1.5)
        out = _raise(out, region, target, sp, rng, sig, lung, noise_sd)
        if pattern != "atelectasis":
            air = _bronchograms(region, sp, rng, int(rng.integers(0, 6)))
            out = np.where(air, rng.uniform(*AIR_HU) + noise_sd * rng.standard_normal(out.shape), out)
    elif pattern in ("diffuse_ggo", "crazy_paving"):
        region = _field_region(side, sp, rng, rng.uniform(0.4, 1.0), rng.uniform(8, 25))
        target = rng.uniform(*GGO_HU) + 40.0 * tex
        if pattern == "crazy_paving":
            net = _noise(out.shape, sp, rng.uniform(2.5, 4.0), rng)
            target = np.where(np.abs(net) < 0.12, target + rng.uniform(100, 250), target)
        out = _raise(out, region, target, sp, rng, rng.uniform(0.8, 2.0), lung, noise_sd)
    elif pattern == "emphysema":
        region = _field_region(side, sp, rng, rng.uniform(0.1, 0.5), rng.uniform(3, 8))
        target = rng.uniform(-1000, -960) + 8.0 * tex
        alpha = np.clip(_inplane_blur(region, sp, 0.8), 0, 1) * side
        out = out + alpha * np.minimum(target - out, 0.0)
        # thin-walled cysts
        pts = np.argwhere(side)
        yy, xx = np.mgrid[0:side.shape[1], 0:side.shape[2]]
        for _ in range(int(rng.integers(0, 6))):
            if len(pts) == 0:
                break
            z, y0, x0 = pts[rng.integers(len(pts))]
            r = rng.uniform(2.5, 15.0)
            d = np.hypot((yy - y0) * sp[1], (xx - x0) * sp[2])
            zs = slice(max(0, z - int(r / sp[0])), z + int(r / sp[0]) + 1)
            cyst = (d <= r)[None] & side[zs]
            wall = ((d > r) & (d <= r + rng.uniform(0.7, 1.5)))[None] & side[zs]
            out[zs] = np.where(cyst, rng.uniform(-1000, -980), out[zs])
            out[zs] = np.where(wall, np.maximum(out[zs], rng.uniform(-200, 0)), out[zs])
    elif pattern == "effusion":
        lo, hi = _row_extent(side)
        depth_mm = rng.uniform(5.0, 70.0)
        level = hi - np.minimum(depth_mm / sp[1], 0.8 * (hi - lo))
        outside = ~side
        dist = np.stack([ndi.distance_transform_edt(~o, sampling=sp[1:]) if o.any() else np.full(o.shape, 1e3)
                         for o in outside])
        rise = rng.uniform(8.0, 40.0) / sp[1]
        lam = rng.uniform(3.0, 8.0)
        wobble = 1.5 / sp[1] * _noise(side.shape, sp, 12.0, rng)
        fluid = side & (_rows(side.shape) >= level[:, None, None] - rise * np.exp(-dist / lam) + wobble)
        # keep the meniscus posterior-lateral: no fluid in the anterior half of the lung
        mid = (lo + hi) / 2.0
        fluid &= _rows(side.shape) > mid[:, None, None]
        if fluid.any():
            fd = np.stack([ndi.distance_transform_edt(~f, sampling=sp[1:]) if f.any() else np.full(f.shape, 1e3)
                           for f in fluid])
            reach = rng.uniform(4.0, 18.0)
            comp = side & ~fluid & (fd <= reach)
            dens = rng.uniform(-450.0, 20.0)
            t = np.clip(1.0 - fd / reach, 0.0, 1.0)
            target = -850.0 + (dens + 850.0) * t + 20.0 * tex
            out = np.where(comp, np.maximum(out, target + noise_sd * rng.standard_normal(out.shape)), out)
            val = rng.uniform(*EFFUSION_HU)
            fl = np.clip(_inplane_blur(fluid, sp, 0.5), 0, 1)
            fl = np.where(fluid, 1.0, fl * side)
            out = out + fl * (val + 0.7 * noise_sd * rng.standard_normal(out.shape) - out)
            eff |= fluid
    else:
        raise ValueError(f"unknown pattern {pattern!r} (expected one of {PATTERNS})")
    return out


def paint_disease(hu: np.ndarray, right: np.ndarray, left: np.ndarray, spacing_mm, rng: np.random.Generator,
                  patterns: tuple[str, ...] | None = None, sides: str | None = None):
    """Paint pathology into the lungs of ``hu`` (z, y, x).

    patterns: the patterns to paint (in order); None draws 1-3 at random (effusion, when
        drawn, is painted first so that consolidation and GGO land on the remaining lung).
    sides: "right" | "left" | "both" | None (random; both in ~60%).
    Returns (hu_out float32, right_out, left_out, effusion) with boolean masks; the lung
    labels are the input masks minus the effusion.
    """
    if hu.ndim != 3 or hu.shape != right.shape or hu.shape != left.shape:
        raise ValueError(f"hu {hu.shape}, right {right.shape}, left {left.shape} must be the same 3-D shape")
    sp = tuple(float(s) for s in spacing_mm)
    out = hu.astype(np.float32).copy()
    right, left = right.astype(bool), left.astype(bool)
    lung = right | left
    eff = np.zeros(hu.shape, bool)
    if patterns is None:
        k = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        patterns = tuple(rng.choice(PATTERNS, size=k, replace=False))
        patterns = tuple(sorted(patterns, key=lambda p: p != "effusion"))
    for p in patterns:
        if p not in PATTERNS:
            raise ValueError(f"unknown pattern {p!r} (expected one of {PATTERNS})")
    if sides is None:
        sides = "both" if rng.random() < 0.6 else ("right" if rng.random() < 0.5 else "left")
    if sides not in ("right", "left", "both"):
        raise ValueError(f"sides must be right, left or both, got {sides!r}")
    noise_sd = _host_noise(out, lung)
    chosen = [m for name, m in (("right", right), ("left", left)) if sides in (name, "both")]
    for p in patterns:
        for side in chosen:
            live = side & ~eff
            if live.sum() < 20:
                continue
            out = _paint_one(p, out, live, lung & ~eff, sp, rng, noise_sd, eff)
    return out.astype(np.float32), right & ~eff, left & ~eff, eff


def paint_dependent_consolidation(hu: np.ndarray, right: np.ndarray, left: np.ndarray,
                                  fraction: float = 0.4, level_hu: float = 30.0,
                                  rng: np.random.Generator | None = None) -> np.ndarray:
    """The issue's measurement case: dense consolidation filling the posterior ``fraction``
    of both lungs (per slice and side, by row), ``level_hu`` +- 15 HU noise. Only raises HU
    (vessels brighter than the level stay). The lung masks are unchanged (it is all lung)."""
    rng = rng or np.random.default_rng(0)
    out = hu.astype(np.float32).copy()
    rows = _rows(hu.shape)
    for side in (right.astype(bool), left.astype(bool)):
        lo, hi = _row_extent(side)
        level = hi - fraction * (hi - lo)
        region = side & (rows >= level[:, None, None])
        target = level_hu + 15.0 * rng.standard_normal(hu.shape).astype(np.float32)
        out = np.where(region, np.maximum(out, target), out)
    return out
