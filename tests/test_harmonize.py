"""Sharp reconstruction kernels (segmentation.harmonize, analysis.harmonize_kernel): the
aerated-lung noise is measured robustly, a soft-kernel image is never touched, and a noisy one
is smoothed in-plane just enough to reach the reference, for the lesion network only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segmentation.harmonize import (NOISE_REFERENCE_HU, SIGMA_STEP_PX, harmonize_for_lesions,
                                    lung_noise_hu)

SHAPE = (30, 128, 128)


def _chest(noise_sd: float, seed: int = 0, vessels: bool = True):
    """A slab of aerated lung (-860 HU) with white noise of ``noise_sd`` and bright vessels."""
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, 40.0, np.float32)
    lung = np.zeros(SHAPE, bool)
    lung[:, 20:108, 20:108] = True
    hu[lung] = -860.0
    if vessels:   # 25 vessels seen end-on (3 px across, ~1 % of the lung) at +40 HU
        _, y, x = np.indices(SHAPE)
        for cy, cx in rng.integers(28, 100, size=(25, 2)):
            hu[(y - cy) ** 2 + (x - cx) ** 2 <= 2] = 40.0
    hu += rng.standard_normal(SHAPE).astype(np.float32) * noise_sd
    return hu, lung


@pytest.mark.parametrize("sd", [10.0, 25.0, 60.0])
def test_noise_is_the_pixel_noise_of_the_aerated_lung(sd: float) -> None:
    hu, lung = _chest(sd, vessels=False)
    assert lung_noise_hu(hu, lung) == pytest.approx(sd, rel=0.08)
    # vessels (and the lung's edge) are a minority of the voxels: the median barely moves
    hu, lung = _chest(sd)
    assert lung_noise_hu(hu, lung) == pytest.approx(sd, rel=0.2)


def test_a_soft_kernel_image_is_not_touched() -> None:
    hu, lung = _chest(20.0)
    out = harmonize_for_lesions(hu, lung)
    assert not out.smoothed and out.sigma_px == 0.0
    assert out.hu is hu                      # the stored array itself, no copy
    assert out.noise_hu == pytest.approx(20.0, rel=0.2)


def test_a_sharp_image_is_smoothed_just_to_the_reference() -> None:
    hu, lung = _chest(80.0)
    out = harmonize_for_lesions(hu, lung)
    assert out.smoothed and out.noise_hu > NOISE_REFERENCE_HU >= out.noise_after_hu
    # the smallest step that reaches it: one step less would not
    less = out.sigma_px - SIGMA_STEP_PX
    assert less >= 0
    if less > 0:
        smaller = ndi.gaussian_filter(hu, sigma=(0, less, less), mode="nearest")
        assert lung_noise_hu(smaller, lung) > NOISE_REFERENCE_HU
    # in-plane only: slices are not mixed
    assert out.hu.shape == hu.shape
    one = harmonize_for_lesions(hu[:1].repeat(3, axis=0), lung[:3])
    np.testing.assert_allclose(one.hu[0], one.hu[1])
    # the input is left as it was
    assert lung_noise_hu(hu, lung) == pytest.approx(out.noise_hu)


def test_no_aerated_lung_means_nothing_is_done() -> None:
    hu, _ = _chest(80.0)
    empty = np.zeros(SHAPE, bool)
    out = harmonize_for_lesions(hu, empty)
    assert not out.smoothed and out.hu is hu and np.isnan(out.noise_hu)
    with pytest.raises(ValueError, match="differ in shape"):
        lung_noise_hu(hu, empty[:2])
