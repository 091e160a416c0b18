"""COVID-Lesion Net shape and the unet engine on the CPU (small inputs, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segmentation.types import Volume
from segmentation.unet import ConvBNAct, CovidLesionNet


def test_network_has_the_studys_shape():
    net = CovidLesionNet(in_channels=3, out_channels=3, width=8)
    blocks = [m for m in net.modules() if isinstance(m, ConvBNAct)]
    assert len(blocks) == 12
    for b in blocks:  # each segment is conv -> batch norm -> activation
        assert isinstance(b[0], nn.Conv2d) and isinstance(b[1], nn.BatchNorm2d) and isinstance(b[2], nn.ReLU)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in net.modules()) == 3


@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_shape_equals_input_shape(out_channels):
    net = CovidLesionNet(3, out_channels, width=8).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.inference_mode():
        y = net(x)
    assert y.shape == (2, out_channels, 48, 64)


def _save_random_weights(tmp_path, seed=0):
    from segmentation.train import save_weights

    torch.manual_seed(seed)
    return save_weights(CovidLesionNet(3, 3, 16).eval(), tmp_path, {"seed": seed})


def _small_volume():
    rng = np.random.default_rng(0)
    hu = np.full((6, 64, 80), 40.0, np.float32)
    lung = np.zeros(hu.shape, bool)
    lung[1:5, 12:52, 8:36] = True
    lung[1:5, 12:52, 44:72] = True
    hu[lung] = -850.0
    hu += rng.normal(0, 10, hu.shape).astype(np.float32)
    return Volume(hu, (2.5, 0.75, 0.75)), lung


def test_engine_predicts_on_the_source_grid_inside_the_lung(tmp_path):
    from segmentation.unet_engine import UNetLesionEngine

    digest = _save_random_weights(tmp_path)
    eng = UNetLesionEngine(tmp_path / "covid_lesion_net.pt", device="cpu")
    assert eng.sha256 == digest and eng.device.type == "cpu"
    vol, lung = _small_volume()
    les = eng.predict(vol, lung)
    assert les.shape == vol.hu.shape and les.dtype == bool
    assert not (les & ~lung).any()
    # no lung: nothing to predict
    assert not eng.predict(vol, np.zeros_like(lung)).any()


def test_engine_refuses_weights_with_a_bad_checksum(tmp_path):
    from segmentation.unet_engine import UNetLesionEngine, WeightsChecksumError

    _save_random_weights(tmp_path)
    side = tmp_path / "covid_lesion_net.pt.sha256"
    side.write_text("0" * 64 + "  covid_lesion_net.pt\n")
    with pytest.raises(WeightsChecksumError):
        UNetLesionEngine(tmp_path / "covid_lesion_net.pt", device="cpu")
    side.unlink()
    with pytest.raises(WeightsChecksumError):
        UNetLesionEngine(tmp_path / "covid_lesion_net.pt", device="cpu")


def test_engine_rejects_unknown_device(tmp_path):
    from segmentation.unet_engine import UNetLesionEngine

    _save_random_weights(tmp_path)
    with pytest.raises(ValueError):
        UNetLesionEngine(tmp_path / "covid_lesion_net.pt", device="tpu")


def test_shipped_weights_load_when_present():
    from segmentation.unet_engine import DEFAULT_WEIGHTS, UNetLesionEngine

    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped weights yet")
    eng = UNetLesionEngine(device="cpu")
    vol, lung = _small_volume()
    les = eng.predict(vol, lung)
    # a lesion-free synthetic lung (uniform -850 HU) should stay almost clean
    assert les.sum() <= 0.05 * lung.sum()



def test_shipped_engine_finds_the_phantoms_central_consolidation_given_the_truth_lung():
    """Issue 6: the default lesion engine, on the CPU, given the phantom's truth lung, finds
    most of its GGO and a good part of its round central consolidations (the shipped model
    before issue 6: <10%). The consolidation against the chest wall is still missed (model
    card, "what limits accuracy"), so it is not asserted here."""
    from scipy import ndimage as ndi

    from node.phantom import phantom_with_labels
    from segmentation.unet_engine import DEFAULT_WEIGHTS, UNetLesionEngine

    if not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped weights")
    vol, _, lab = phantom_with_labels(seed=2, slices=80, size=192)
    les = UNetLesionEngine(device="cpu").predict(Volume(vol.hu.astype(np.float32), vol.spacing_mm), lab["lung"])
    central = lab["consolidation"] & ~lab["pleural_consolidation"]
    assert central.any()
    assert les[central].mean() >= 0.4
    assert les[lab["ggo"]].mean() >= 0.7
    normal = lab["lung"] & ~ndi.binary_dilation(lab["ggo"] | lab["consolidation"] | lab["vessel"], iterations=2)
    assert les[normal].mean() < 0.01, "normal lung stays background"


def test_shipped_engine_finds_painted_dependent_consolidation_in_a_real_lung():
    """Dense dependent (posterior) consolidation painted into a real lesion-free lung
    (LIDC-IDRI-0001, held-out cranial slices, never a training host): consolidation within 15%
    with the truth lung given; the unpainted slices stay (nearly) lesion-free."""
    from peers import shared_data_dir
    from quant.hu_split import split_lesion
    from segmentation.lesion_synth import synthesize_lesions
    from segmentation.lungs import segment_lungs
    from segmentation.train import read_image
    from segmentation.unet_engine import DEFAULT_WEIGHTS, UNetLesionEngine

    series = shared_data_dir() / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series"
    if not DEFAULT_WEIGHTS.exists() or not series.exists():
        pytest.skip("no shipped weights or no LIDC-IDRI-0001")
    import SimpleITK as sitk

    img = read_image(series)
    hu = sitk.GetArrayFromImage(img).astype(np.float32)[80:104]
    sp = tuple(float(s) for s in img.GetSpacing()[::-1])
    lm = segment_lungs(Volume(hu, sp))
    out, lab = hu.copy(), np.zeros(hu.shape, np.uint8)
    for side in (lm.left, lm.right):
        ml = 0.35 * side.sum() * np.prod(sp) / 1000.0
        o, la = synthesize_lesions(hu, side, sp, np.random.default_rng(11), ml, pattern="dependent",
                                   vessels_not_lesion=True)
        out = np.where(side, o, out)
        lab = np.where(side, la, lab)
    lung = lm.left | lm.right
    eng = UNetLesionEngine(device="cpu")
    les = eng.predict(Volume(out, sp), lung)
    _, cons = split_lesion(out, les, -750.0, -350.0)
    assert cons.sum() == pytest.approx((lab == 2).sum(), rel=0.15)
    clean = eng.predict(Volume(hu, sp), lung)
    assert clean.sum() < 0.005 * lung.sum()
