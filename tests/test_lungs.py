"""Lung segmentation on the synthetic phantom (truth known) and on a real lesion-free CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from node.phantom import phantom_with_labels
from segmentation.lungs import segment_lungs
from segmentation.types import Volume

LIDC = Path("/work/shared/data/lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series")


@pytest.fixture(scope="module")
def phantom():
    volume, truth, labels = phantom_with_labels(seed=0)
    return volume, truth, labels, segment_lungs(volume)


def load_every_second_slice(folder: Path) -> Volume:
    pydicom = pytest.importorskip("pydicom")
    files = sorted(folder.glob("*.dcm"))
    if not files:
        pytest.skip(f"shared data missing: {folder}")
    slices = sorted((pydicom.dcmread(p) for p in files), key=lambda d: float(d.ImagePositionPatient[2]))
    slices = slices[::2]
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    dz = float(np.median(np.diff([float(d.ImagePositionPatient[2]) for d in slices])))
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    return Volume(hu=hu.astype(np.float32), spacing_mm=(dz, dy, dx))


def test_phantom_sides_and_volumes(phantom):
    volume, truth, labels, masks = phantom
    vml = volume.voxel_volume_ml
    # the patient's left lung is at the higher column index
    assert np.nonzero(masks.left)[2].mean() > np.nonzero(masks.right)[2].mean()
    for side in ("left", "right"):
        got = getattr(masks, side).sum() * vml
        assert got == pytest.approx(truth[f"{side}_lung_volume_ml"], rel=0.05)
        overlap = (getattr(masks, side) & labels[side]).sum() / labels[side].sum()
        assert overlap > 0.97
    lung = masks.left | masks.right
    assert lung.sum() * vml == pytest.approx(truth["lung_volume_ml"], rel=0.05)
    assert not (masks.left & masks.right).any()


def test_phantom_airways_excluded(phantom):
    volume, truth, labels, masks = phantom
    lung = masks.left | masks.right
    lumen = labels["airway_lumen"]
    # the trachea and main bronchi (away from the lungs) are not lung at all
    outside = lumen & ~ndi.binary_dilation(labels["lung"], iterations=3)
    assert outside.sum() > 0 and (lung & outside).sum() == 0
    # the lumen inside the lungs is mostly removed too (small bronchi blur above -950 HU)
    assert (lung & lumen).sum() <= 0.2 * lumen.sum()
    assert masks.airway is not None and (masks.airway & lumen).sum() > 0.5 * lumen.sum()


def test_phantom_pleural_consolidation_kept(phantom):
    _, _, labels, masks = phantom
    pleural = labels["pleural_consolidation"]
    assert pleural.sum() > 0
    assert (pleural & masks.right).sum() / pleural.sum() > 0.95


def test_real_lidc_two_plausible_lungs():
    volume = load_every_second_slice(LIDC)
    masks = segment_lungs(volume)
    vml = volume.voxel_volume_ml
    left_ml, right_ml = masks.left.sum() * vml, masks.right.sum() * vml
    assert 2500 < left_ml + right_ml < 8000
    assert 0.6 < left_ml / right_ml < 1.4
    assert np.nonzero(masks.left)[2].mean() > np.nonzero(masks.right)[2].mean()


def test_fill_holes_2d_matches_slice_by_slice_scipy():
    """fill_holes_2d works in the mask's bounding box; it must fill exactly what
    scipy's binary_fill_holes fills on each axial slice, also where the mask touches the
    image border or a slice is empty."""
    from segmentation.lungs import fill_holes_2d

    rng = np.random.default_rng(3)
    mask = ndi.gaussian_filter(rng.random((6, 64, 80)), (0, 2, 2)) > 0.52
    mask[1] = False                          # an empty slice
    mask[2, :, :5] = True                    # touching the left border
    mask[3, 20:40, 30:50] = True
    mask[3, 25:35, 35:45] = False            # a square hole
    mask[4, 0:10, 70:80] = True
    mask[4, 3:6, 76:80] = False              # open to the right border: not a hole
    expected = np.stack([ndi.binary_fill_holes(s) for s in mask])
    assert (fill_holes_2d(mask) == expected).all()
    assert fill_holes_2d(mask)[3, 30, 40] and not fill_holes_2d(mask)[4, 4, 79]
    assert not fill_holes_2d(np.zeros((2, 8, 8), bool)).any()


@pytest.mark.parametrize("f", [(2, 2, 2), (1, 2, 2), (3, 2, 2), (1, 1, 1)])
@pytest.mark.parametrize("shape", [(12, 16, 20), (11, 15, 17)])
def test_downsample_is_the_block_mean_of_the_edge_padded_volume(f, shape):
    from segmentation.lungs import _downsample

    hu = np.random.default_rng(0).integers(-1024, 2000, shape).astype(np.int16)
    padded = np.pad(hu.astype(np.float32), [(0, (-n) % k) for n, k in zip(shape, f)], mode="edge")
    z, y, x = padded.shape
    expected = padded.reshape(z // f[0], f[0], y // f[1], f[1], x // f[2], f[2]).mean(axis=(1, 3, 5))
    got = _downsample(hu, f)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
