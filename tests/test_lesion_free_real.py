"""Issue 6 target "lesion-free lungs": the default analysis (learned lungs, traced lobes,
lesion net, hilar filter, pneumonia-not-nodules rules) on real lesion-free CT, read the way
`lungnode evaluate slices` reads the COVID-CT-MD series (their UIDs are not valid DICOM).

normal002 must come out with CT score 0 and lesions under 0.5 % of the lung; the lesion-model
false positives it used to score (CT score 4 before the hilar filter) are dense vessels around
the central bronchi, and the note that says they were taken out must be there. LIDC-IDRI-0001
(nodules, no pneumonia) must stay under 0.5 % lesions; its CT score is 1 today (apical partial
volume beside the contrast-filled subclavian vein, right upper lobe), so it is checked to stay
at most 1 and the target CT score 0 is reported as not met in the model card, not asserted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from node.analysis import segment_configured
from peers import shared_data_dir
from node.config import load_settings
from node.volume import load_series
from quant.measure import measure
from segmentation.types import Volume


def _load(series_dir: Path) -> Volume:
    files = sorted(p for p in series_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
    return load_series(files, require_valid_uids=False).volume


def _analyse(volume: Volume):
    a = load_settings(None, None).analysis   # the embedded default config.yaml
    masks = segment_configured(volume, a)
    return masks, measure(volume, masks, a.ggo_min_hu, a.consolidation_min_hu,
                          a.lobe_involvement_floor_pct)


def _default_analysis(series_dir: Path):
    return _analyse(_load(series_dir))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_normal002_scores_zero(shared_data: Path) -> None:
    masks, m = _default_analysis(shared_data / "covid_ct_md_samples" / "normal002")
    assert m.engine == "unet" and masks.lobes is not None
    assert 3000.0 < m.lung_volume_ml < 7000.0
    assert m.lesion_pct < 0.5
    assert m.ct_score == 0 and m.involved_lobes == 0
    assert any(n.startswith("hilum: ") and "taken as hilar vessels" in n for n in masks.notes)


@pytest.fixture(scope="module")
def lidc0001():
    """(volume, masks, measurements) of LIDC-IDRI-0001 as stored, analysed once."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared test data not found at {root} (set LUNGNODE_TEST_DATA)")
    volume = _load(root / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series")
    return (volume, *_analyse(volume))


def test_lidc0001_stays_under_half_a_percent(lidc0001) -> None:
    _, masks, m = lidc0001
    assert masks.lobes is not None
    assert m.lesion_pct < 0.5
    assert m.ct_score is not None and m.ct_score <= 1


def test_lidc0001_at_half_the_slice_spacing_is_the_same_lung(lidc0001) -> None:
    """The same series interpolated to 1.25 mm slices (benchmarks/slice_spacing.py prints the
    whole comparison, 5 mm included): the lung volume within 1 %, the 21 mm solid nodule
    still a nodule (a 2-voxel mask speck within 10 mm of it used to make it pneumonia at
    1.25 mm), the same CT score."""
    volume, _, native = lidc0001
    hu = ndi.zoom(volume.hu.astype(np.float32), (2, 1, 1), order=1, grid_mode=True, mode="nearest")
    thin = Volume(hu, (volume.spacing_mm[0] / 2, *volume.spacing_mm[1:]), volume.direction,
                  volume.origin_mm)
    _, m = _analyse(thin)
    assert m.lung_volume_ml == pytest.approx(native.lung_volume_ml, rel=0.01)
    for result in (native, m):
        assert [round(c.volume_ml) for c in result.excluded_lesions if c.kind == "nodule"] == [5]
    assert m.lesion_pct < 0.5
    assert m.ct_score == native.ct_score


def test_lidc0001_at_5_mm_says_its_scores_are_likely_too_high(lidc0001) -> None:
    """The same series averaged in slice pairs to 5 mm (the node accepts up to 5 mm): the lung
    is the same, and the thick_slices quality flag is in measurements and the SR's remarks
    (at 5 mm this lesion-free lung scores 3, as stored 1: benchmarks/slice_spacing.py)."""
    volume, _, native = lidc0001
    n = volume.hu.shape[0] // 2 * 2
    hu = volume.hu[:n].astype(np.float32).reshape(n // 2, 2, *volume.hu.shape[1:]).mean(axis=1)
    thick = Volume(np.round(hu).astype(np.int16), (volume.spacing_mm[0] * 2, *volume.spacing_mm[1:]),
                   volume.direction, volume.origin_mm)
    _, m = _analyse(thick)
    assert m.lung_volume_ml == pytest.approx(native.lung_volume_ml, rel=0.02)
    assert [(f.code.value, f.region, f.value) for f in m.quality_findings
            if f.code.value == "thick_slices"] == [("thick_slices", "lungs", 5.0)]
    assert any(flag.startswith("thick_slices: slices 5.0 mm apart") for flag in m.quality_flags)
    assert not any(f.code.value == "thick_slices" for f in native.quality_findings)


def _simulated_sharp_kernel(hu: np.ndarray, gain: float, noise_sd: float) -> np.ndarray:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sharp_kernel.py"
    spec = importlib.util.spec_from_file_location("sharp_kernel_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sharpen(hu, gain, noise_sd)


def test_lidc0001_as_a_sharp_kernel_with_harmonize_kernel(lidc0001) -> None:
    """analysis.harmonize_kernel (off by default): the stored soft-kernel series is not
    touched (no note in the default analysis), and on the same scan simulated as a strong
    lung kernel (benchmarks/sharp_kernel.py) the lesion network's input is smoothed, a note
    says so, and the false lesion volume falls (0.93 % -> 0.34 % when measured)."""
    volume, native_masks, _ = lidc0001
    assert not any(n.startswith("high noise") for n in native_masks.notes)
    sharp = Volume(_simulated_sharp_kernel(volume.hu, 1.5, 100.0), volume.spacing_mm,
                   volume.direction, volume.origin_mm)
    a = load_settings(None, None).analysis
    assert a.harmonize_kernel is False
    off = segment_configured(sharp, a)
    on = segment_configured(sharp, a.model_copy(update={"harmonize_kernel": True}))
    notes = [n for n in on.notes if n.startswith("high noise: aerated-lung noise")]
    assert len(notes) == 1 and "smoothed in-plane" in notes[0]
    assert not any(n.startswith("high noise") for n in off.notes)
    assert on.lesion.sum() < 0.6 * off.lesion.sum()
    # lungs are drawn on the stored HU either way
    np.testing.assert_array_equal(on.lung, off.lung)
    # and the analysis says the image is noisy, on or off; the stored series is not flagged
    m = measure(sharp, off, a.ggo_min_hu, a.consolidation_min_hu, a.lobe_involvement_floor_pct)
    assert [f.code.value for f in m.quality_findings if f.region == "lungs"] == ["high_noise"]
    assert not any(f.code.value == "high_noise" for f in lidc0001[2].quality_findings)
