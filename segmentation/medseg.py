"""The MedSeg COVID-19 slices (Inf-Net release): loading, HU calibration and grid mapping.

The slices are 8-bit JPEGs with a publication display window burned in, stored transposed
(anterior at the image left), with no pixel spacing and no neighbours. Used for training
(Inf-Net ``train`` split) and validation (Inf-Net ``test`` split, never trained on) and by
``lungnode evaluate medseg``.

Calibration (per image, linear, documented in MODEL_CARD.md):
    dark  = 0.5th percentile of the gray values     -> -1000 HU (air in the airways / the
            darkest aerated lung; outside-body air is mostly cropped away in this set)
    soft  = the mode of the smoothed histogram among gray values 120..254 (chest-wall
            muscle, mediastinum, heart: the largest soft-tissue area) -> +40 HU
    HU    = -1000 + (gray - dark) * 1040 / (soft - dark)
Images whose window saturates soft tissue (mode at 250+) get consolidation compressed
towards +40 HU; images whose window is narrow get GGO spread wider. Both remain limits.

Geometry: after transposing back to radiological display, each image is resized so that its
left-right extent spans MEDSEG_FIELD_MM at the model's pixel size (the crops show the whole
chest width, ~330 mm; the real pixel size is unknown). Predictions are resized back to the
source grid (nearest for labels, bilinear for probabilities).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

CALIB_DARK_HU = -1000.0
CALIB_SOFT_HU = 40.0
MEDSEG_FIELD_MM = 330.0
SOFT_SEARCH = (120, 254)


@dataclass(frozen=True)
class MedSegSlice:
    """One slice in radiological display orientation (transposed back)."""

    slice_id: str
    split: str  # "train" | "test" (Inf-Net's split) | "unknown"
    gray: np.ndarray  # uint8 (H, W)
    hu: np.ndarray  # float32 calibrated HU (H, W)
    labels: np.ndarray  # uint8 0 bg / 1 GGO / 2 consolidation (H, W)


def calibration_points(gray: np.ndarray) -> tuple[float, float]:
    """(dark, soft) gray values of the linear HU calibration."""
    g = gray.astype(np.float32).ravel()
    dark = float(np.percentile(g, 0.5))
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    hist = ndi.gaussian_filter1d(hist, 2.0)
    lo, hi = SOFT_SEARCH
    soft = float(lo + np.argmax(hist[lo:hi + 1]))
    if soft - dark < 60:  # degenerate window: fall back to the 90th percentile
        soft = max(float(np.percentile(g, 90)), dark + 60)
    return dark, soft


def calibrate_to_hu(gray: np.ndarray) -> np.ndarray:
    """Map burned-in 8-bit gray values to approximate HU (see module docstring)."""
    dark, soft = calibration_points(gray)
    scale = (CALIB_SOFT_HU - CALIB_DARK_HU) / (soft - dark)
    return (CALIB_DARK_HU + (gray.astype(np.float32) - dark) * scale).astype(np.float32)


def read_splits(root: Path) -> dict[str, str]:
    f = root / "slices.csv"
    if not f.exists():
        return {}
    with f.open() as fh:
        return {row["slice_id"]: row.get("infnet_split", "unknown") for row in csv.DictReader(fh)}


def load_medseg(root: str | Path, split: str = "all") -> list[MedSegSlice]:
    """Read images/*.jpg with lesion_class_mask/*.png (or infection_mask/*.png as GGO-less
    binary) from ``root``. split: "all" | "train" | "val" (val = Inf-Net ``test``)."""
    from PIL import Image  # local: only this loader needs Pillow

    root = Path(root)
    if split not in ("all", "train", "val"):
        raise ValueError(f"split must be all, train or val, got {split!r}")
    splits = read_splits(root)
    want = {"all": None, "train": "train", "val": "test"}[split]
    out = []
    images = sorted((root / "images").glob("*.jpg"))
    if not images:
        raise FileNotFoundError(f"no images/*.jpg under {root}")
    for f in images:
        sid = f.stem
        sp = splits.get(sid, "unknown")
        if want is not None and sp != want:
            continue
        gray = np.asarray(Image.open(f).convert("L")).T.copy()
        cls = root / "lesion_class_mask" / f"{sid}.png"
        if cls.exists():
            labels = np.asarray(Image.open(cls)).astype(np.uint8).T.copy()
        else:
            inf = np.asarray(Image.open(root / "infection_mask" / f"{sid}.png"))
            labels = (inf > 127).astype(np.uint8).T.copy()
        if labels.shape != gray.shape:
            raise ValueError(f"{sid}: mask {labels.shape} != image {gray.shape}")
        out.append(MedSegSlice(sid, sp, gray, calibrate_to_hu(gray), labels))
    if want is not None and not out:
        raise ValueError(f"no slices of split {split!r} under {root} (slices.csv missing?)")
    return out


def model_grid_shape(shape: tuple[int, int], pixel_mm: float) -> tuple[int, int]:
    """Target (H, W) on the model grid: width = MEDSEG_FIELD_MM / pixel_mm, aspect kept."""
    h, w = shape
    new_w = int(round(MEDSEG_FIELD_MM / pixel_mm))
    return max(8, int(round(h * new_w / w))), max(8, new_w)


def lung_mask_2d(hu: np.ndarray) -> np.ndarray:
    """Rough 2-D lung mask of a calibrated slice (for the threshold engine's comparison):
    aerated pixels (< -500 HU) in components >= 1% of the image, closed (5 px), holes
    filled, then each component's convex hull (brings back dense lesions at the pleura)."""
    from scipy.spatial import Delaunay, QhullError

    air = ndi.binary_opening(hu < -500, iterations=1)
    lab, n = ndi.label(air)
    sizes = ndi.sum(air, lab, range(1, n + 1))
    keep = np.isin(lab, 1 + np.nonzero(sizes >= 0.01 * hu.size)[0])
    keep = ndi.binary_fill_holes(ndi.binary_closing(keep, iterations=5, border_value=0))
    lab, n = ndi.label(keep)
    out = np.zeros_like(keep)
    yy, xx = np.mgrid[: hu.shape[0], : hu.shape[1]]
    pts_all = np.stack([yy.ravel(), xx.ravel()], 1)
    for i in range(1, n + 1):
        comp = lab == i
        pts = np.argwhere(comp)
        try:
            hull = Delaunay(pts)
            out |= (hull.find_simplex(pts_all) >= 0).reshape(hu.shape)
        except QhullError:
            out |= comp
    return out
