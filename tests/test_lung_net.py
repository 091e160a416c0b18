"""LungNet shapes, the lung engine on the CPU (random and shipped weights), checksum refusal."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from segmentation.lung_net import LEFT, RIGHT, LungNet, normalise_hu
from segmentation.types import Volume


def test_output_is_three_classes_on_the_input_grid():
    net = LungNet(1, 3, width=8).eval()
    with torch.inference_mode():
        y = net(torch.randn(2, 1, 96, 144))
    assert y.shape == (2, 3, 96, 144)


def test_input_not_a_multiple_of_16_is_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        LungNet(1, 3, width=8)(torch.randn(1, 1, 100, 96))


def test_normalise_clips_air_padding_and_bone():
    v = normalise_hu(np.array([-3024.0, -1100.0, 500.0, 3000.0]))
    assert v[0] == v[1] and v[2] == v[3] and v[1] < -1.0 < 0.0 < 1.0 < v[2] + 1e-6


def _random_weights(tmp_path, seed=0):
    from segmentation.train_lungs import save_weights

    torch.manual_seed(seed)
    return save_weights(LungNet(1, 3, 16).eval(), tmp_path, {"seed": seed})


def test_engine_output_is_on_the_source_grid(tmp_path):
    from segmentation.lung_engine import LungNetEngine

    digest = _random_weights(tmp_path)
    eng = LungNetEngine(tmp_path / "lung_net.pt", device="cpu")
    assert eng.sha256 == digest and eng.device.type == "cpu"
    hu = np.full((5, 70, 90), 40.0, np.float32)  # odd sizes, anisotropic pixels
    hu[:, 10:60, 10:40] = -850.0
    hu[:, 10:60, 50:80] = -850.0
    lm = eng.predict(Volume(hu, (3.0, 0.8, 0.7)), remove_airways=False)
    assert lm.left.shape == hu.shape and lm.right.shape == hu.shape
    assert lm.left.dtype == bool and not (lm.left & lm.right).any()
    raw = eng.predict_labels(hu, (0.8, 0.7))
    assert raw.shape == hu.shape and set(np.unique(raw)) <= {0, RIGHT, LEFT}


def test_checksum_mismatch_is_refused(tmp_path):
    from segmentation.lung_engine import LungNetEngine, WeightsChecksumError

    _random_weights(tmp_path)
    with pytest.raises(WeightsChecksumError, match="refusing"):
        LungNetEngine(tmp_path / "lung_net.pt", device="cpu", expected_sha256="0" * 64)
    # a corrupted file beside its (now wrong) checksum
    data = bytearray((tmp_path / "lung_net.pt").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "lung_net.pt").write_bytes(bytes(data))
    with pytest.raises(WeightsChecksumError):
        LungNetEngine(tmp_path / "lung_net.pt", device="cpu")
    # no checksum file at all
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(tmp_path / "lung_net.pt", other / "lung_net.pt")
    with pytest.raises(WeightsChecksumError, match="no checksum file"):
        LungNetEngine(other / "lung_net.pt", device="cpu")


def test_unknown_lung_engine_and_config_key_are_refused():
    from pydantic import ValidationError

    from node.config import AnalysisSettings
    from segmentation.engine import check_engine

    with pytest.raises(ValueError, match="unknown lung engine"):
        check_engine("threshold", "cpu", "lungmask")
    assert AnalysisSettings().lung_engine == "net"
    with pytest.raises(ValidationError, match="lung_engine"):
        AnalysisSettings(lung_engine="lungmask")


def test_cuda_requested_without_a_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from segmentation.lung_engine import LungNetEngine

    _random_weights(tmp_path)
    with pytest.raises(RuntimeError, match="cuda"):
        LungNetEngine(tmp_path / "lung_net.pt", device="cuda")


# ---- the shipped weights on a real series (held-out LIDC-IDRI-0001) ----------------------


@pytest.fixture(scope="module")
def lidc(request):
    from peers import shared_data_dir

    from node.volume import load_series

    d = shared_data_dir() / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series"
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d}")
    from segmentation.lung_engine import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        pytest.fail(f"shipped lung weights missing: {DEFAULT_WEIGHTS}")
    from segmentation.lungs import segment_lungs

    series = load_series(sorted(d.glob("*.dcm")))
    vol = series.volume
    return vol, segment_lungs(vol)


def _dice(a, b):
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_shipped_net_matches_the_trusted_mask_on_a_held_out_series(lidc):
    from segmentation.lung_engine import LungNetEngine

    vol, teacher = lidc
    net = LungNetEngine(device="cpu").predict(vol)
    assert _dice(net.right, teacher.right) > 0.95
    assert _dice(net.left, teacher.left) > 0.95
    # the left lung is on the patient's left: higher column index
    assert np.nonzero(net.left)[2].mean() > np.nonzero(net.right)[2].mean()


@pytest.mark.xfail(strict=True, reason=(
    "known failure (measured -31% lung volume with the weights of 2026-12-02, -39% before): a "
    "homogeneous +30 HU posterior band with a horizontal border looks like the painter's pleural "
    "effusion, and the network still takes much of it out of the lung; see MODEL_CARD.md, LungNet"))
def test_dense_dependent_consolidation_stays_lung(lidc):
    """The issue's case: the posterior 40% of both lungs consolidated; lung volume within 3%."""
    from segmentation.lung_engine import LungNetEngine
    from segmentation.lung_synth import paint_dependent_consolidation

    vol, teacher = lidc
    hu = paint_dependent_consolidation(vol.hu, teacher.right, teacher.left, fraction=0.4)
    sick = Volume(hu, vol.spacing_mm)
    net = LungNetEngine(device="cpu").predict(sick)
    truth = float((teacher.left | teacher.right).sum())
    found = float((net.left | net.right).sum())
    assert abs(found - truth) / truth < 0.03
    assert _dice(net.right, teacher.right) > 0.93 and _dice(net.left, teacher.left) > 0.93


def test_argmax3_is_argmax_with_its_ties():
    import torch

    from segmentation.lung_engine import _argmax3

    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 3, 33, 47, generator=g), 1)
    p[0, :, 0, 0] = torch.tensor([0.4, 0.4, 0.2])    # tie bg / right -> bg
    p[0, :, 0, 1] = torch.tensor([0.2, 0.4, 0.4])    # tie right / left -> right
    p[0, :, 0, 2] = torch.tensor([0.4, 0.2, 0.4])    # tie bg / left -> bg
    p[0, :, 0, 3] = torch.tensor([1 / 3, 1 / 3, 1 / 3])
    got = _argmax3(p)
    assert got.dtype == torch.uint8
    assert torch.equal(got, p.argmax(1).to(torch.uint8))
    assert got[0, 0, :4].tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("which", ["lung", "lesion"])
def test_cpu_engines_run_channels_last_with_the_contiguous_outputs(which):
    """The shipped networks are kept channels-last on the CPU (faster convolutions); their
    outputs equal those of the same weights in the default layout within float rounding."""
    import copy

    if which == "lung":
        from segmentation.lung_engine import LungNetEngine as Engine
        x = torch.randn(4, 1, 96, 112)
    else:
        from segmentation.unet_engine import UNetLesionEngine as Engine
        x = torch.randn(4, 3, 96, 112)
    net = Engine(device="cpu").net
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in net.parameters() if p.ndim == 4)
    plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    assert not all(p.is_contiguous(memory_format=torch.channels_last)
                   for p in plain.parameters() if p.ndim == 4)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-4)


def test_piece_selection_in_the_box_is_the_selection_on_the_whole_grid():
    from scipy import ndimage as ndi

    from segmentation.lung_engine import MIN_PIECE_FRACTION, _clean_side
    from segmentation.lungs import fill_holes_2d

    rng = np.random.default_rng(0)
    mask = np.zeros((40, 90, 120), bool)
    mask[5:35, 10:70, 0:50] = True                  # the lung, on the first column
    mask[10:30, 30:40, 20:30] = False               # a hole (a dense nodule)
    mask[2:8, 75:88, 60:75] = True                  # a piece above MIN_PIECE_FRACTION
    mask[20:22, 80:82, 100:102] = True              # a speck below it
    mask |= rng.random(mask.shape) > 0.9995
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.concatenate([[False], sizes >= MIN_PIECE_FRACTION * sizes.max()])
    np.testing.assert_array_equal(_clean_side(mask), fill_holes_2d(keep[labels]))
    assert not _clean_side(np.zeros((4, 5, 6), bool)).any()
