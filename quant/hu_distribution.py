"""Lung HU histograms and their distance to the shipped normal-lung reference.

Bins are fixed: HIST_MIN_HU..HIST_MAX_HU in HIST_BIN_HU steps (-1024..+200 HU, 8 HU bins,
153 bins); values outside are clipped into the end bins. Histograms are normalised to sum 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIST_MIN_HU = -1024.0
HIST_MAX_HU = 200.0
HIST_BIN_HU = 8.0
REFERENCE_PATH = Path(__file__).resolve().parent / "data" / "normal_lung_hu_reference.json"


def bin_edges() -> np.ndarray:
    return np.arange(HIST_MIN_HU, HIST_MAX_HU + HIST_BIN_HU / 2, HIST_BIN_HU)


def lung_histogram(hu: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Normalised HU histogram of the masked voxels (None when the mask is empty)."""
    values = np.clip(hu[mask].astype(np.float32), HIST_MIN_HU, HIST_MAX_HU - 1e-3)
    if values.size == 0:
        return None
    counts, _ = np.histogram(values, bins=bin_edges())
    return counts / counts.sum()


def _check(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"histograms must be 1-D of equal length, got {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("histograms must be non-negative with a positive sum")
    return p / p.sum(), q / q.sum()


def hellinger_distance(p, q) -> float:
    """Hellinger distance in [0, 1]: 0 for identical, 1 for disjoint distributions."""
    p, q = _check(p, q)
    return float(np.sqrt(max(0.0, 1.0 - np.sqrt(p * q).sum())))


def histogram_iou(p, q) -> float:
    """Histogram intersection over union, sum(min) / sum(max), in [0, 1]."""
    p, q = _check(p, q)
    return float(np.minimum(p, q).sum() / np.maximum(p, q).sum())


@dataclass(frozen=True)
class HuReference:
    bin_edges_hu: np.ndarray
    probabilities: np.ndarray
    sources: list
    method: str


def load_reference(path: Path = REFERENCE_PATH) -> HuReference:
    """Load the normal-lung reference histogram (built by scripts/build_normal_reference.py)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    edges = np.asarray(doc["bin_edges_hu"], np.float64)
    probs = np.asarray(doc["probabilities"], np.float64)
    if not np.allclose(edges, bin_edges()) or probs.shape != (edges.size - 1,):
        raise ValueError(f"{path}: bins do not match quant.hu_distribution's fixed bins")
    return HuReference(edges, probs / probs.sum(), doc["sources"], doc["method"])
