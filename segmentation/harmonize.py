"""Sharp reconstruction kernels: bring the image the lesion network sees to the noise it knows.

Every series the networks were trained or checked on is a soft or standard reconstruction
(GE STANDARD, Siemens B41s / D40s): the high-frequency noise of their aerated lung
(``lung_noise_hu``) is 13.5-26.3 HU. A lung-kernel reconstruction (GE LUNG / BONE, Siemens
B60-B70), which a PACS often routes because it is the thin one, has several times that noise
and an overshoot at every vessel edge; on such images (simulated on the real series,
benchmarks/sharp_kernel.py) the lesion network calls the edge-enhanced vessels consolidation
and a lesion-free lung scores 1-4 instead of 0-1.

``harmonize_for_lesions`` (the node's ``analysis.harmonize_kernel``, off by default: it failed
one clause of its decision rule, see the plan named below): when the noise is above
``NOISE_REFERENCE_HU`` (30 HU, above every series here), the smallest in-plane Gaussian
(steps of ``SIGMA_STEP_PX`` pixels, up to ``MAX_SIGMA_PX``) that brings it to the reference is
applied, to the lesion network's input only: lungs, lobes, the GGO / consolidation split and every HU measure keep the stored HU
(their thresholds are the study's, on the stored image). Plan, decision rule and figures:
segmentation/model_card/candidates/sharp_kernel.plan.md.

The noise is the robust SD (1.4826 x the median absolute deviation) of the residual to a
3 x 3 in-plane mean, over aerated lung (lung mask, HU < ``AERATED_MAX_HU``), scaled to a
pixel SD (x sqrt(9/8)); vessels and edges are a minority of those voxels, so the median
ignores them. It is measured on at most ``NOISE_SLICES`` slices spread over the lung.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

NOISE_REFERENCE_HU = 30.0
AERATED_MAX_HU = -600.0
NOISE_SLICES = 24
SIGMA_STEP_PX = 0.25
MAX_SIGMA_PX = 3.0


@dataclass(frozen=True)
class Harmonized:
    """``hu``: the image for the lesion network (the stored array itself when nothing was
    done); ``noise_hu`` before and ``noise_after_hu`` after; ``sigma_px`` 0 when untouched."""

    hu: np.ndarray
    noise_hu: float
    noise_after_hu: float
    sigma_px: float

    @property
    def smoothed(self) -> bool:
        return self.sigma_px > 0


def _sample_slices(lung: np.ndarray) -> np.ndarray:
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    if zs.size <= NOISE_SLICES:
        return zs
    return zs[np.linspace(0, zs.size - 1, NOISE_SLICES).round().astype(int)]


def _sample(hu: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sampled slices (float32 HU, lung), indexed before conversion: never a float copy
    of the whole volume."""
    zs = _sample_slices(lung)
    return np.asarray(hu)[zs].astype(np.float32), lung[zs]


def lung_noise_hu(hu: np.ndarray, lung: np.ndarray) -> float | None:
    """High-frequency noise (HU) of the aerated lung; None without enough aerated lung."""
    if hu.shape != lung.shape:
        raise ValueError(f"hu {hu.shape} and lung {lung.shape} differ in shape")
    return _noise(*_sample(hu, np.asarray(lung, bool)))


def _noise(hu: np.ndarray, lung: np.ndarray) -> float | None:
    aerated = lung & (hu < AERATED_MAX_HU)
    if np.count_nonzero(aerated) < 1000:
        return None
    residual = (hu - ndi.uniform_filter(hu, size=(1, 3, 3), mode="nearest"))[aerated]
    mad = np.median(np.abs(residual - np.median(residual)))
    return float(1.4826 * mad * np.sqrt(9.0 / 8.0))


def harmonize_for_lesions(hu: np.ndarray, lung: np.ndarray,
                          reference_hu: float = NOISE_REFERENCE_HU) -> Harmonized:
    """The lesion network's input (see the module docstring)."""
    if hu.shape != lung.shape:
        raise ValueError(f"hu {hu.shape} and lung {lung.shape} differ in shape")
    sample, sample_lung = _sample(hu, np.asarray(lung, bool))
    noise = _noise(sample, sample_lung)
    if noise is None or noise <= reference_hu:
        known = noise if noise is not None else float("nan")
        return Harmonized(hu, known, known, 0.0)
    sigma, after = 0.0, noise
    for step in range(1, int(round(MAX_SIGMA_PX / SIGMA_STEP_PX)) + 1):
        sigma = step * SIGMA_STEP_PX
        after = _noise(ndi.gaussian_filter(sample, sigma=(0, sigma, sigma), mode="nearest"),
                       sample_lung)
        if after is None or after <= reference_hu:
            break
    smoothed = ndi.gaussian_filter(np.asarray(hu, np.float32), sigma=(0, sigma, sigma), mode="nearest")
    return Harmonized(smoothed, noise, after if after is not None else float("nan"), sigma)
