"""Lobe segmentation: synthetic lungs with planted fissures, the geometric fallback, the CIP
lobe map (geometric fallback only: its CT is not available), and real chest CT (LIDC-IDRI-0001,
2.5 mm; COVID-CT-MD normal002, 2 mm) where the lobes come from the traced bronchial tree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segmentation.lobe_geometry import boundary_points_mm, largest_axial_patch, plane_residual_mm
from segmentation.lobes import segment_lobes
from segmentation.types import LOBE_KEYS, Lobe, Volume

SPACING = (1.25, 0.75, 0.75)
SHAPE = (200, 240, 320)
# planted fissures (relative to each lung's extents), deliberately 8-15 mm off the model's planes
PLANTED_MAJOR = ((0.68, 1.0), (0.30, 0.15))  # (height, depth) of the posterior and anterior ends
PLANTED_HORIZONTAL = 0.57
CIP_DICE_FLOOR = 0.45  # every lobe, geometric fallback on the CIP slab (assumed span 0.45-0.65)
CIP_MEAN_DICE_FLOOR = 0.75


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _phantom(fissures: bool, seed: int = 0):
    """Two dome-based lungs in soft tissue, with vessels; optionally planted fissure sheets.

    Returns volume (z increasing cranially), left, right masks and the planted lobe labels.
    """
    rng = np.random.default_rng(seed)
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(SHAPE, SPACING))
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    masks = []
    for xc, medial in ((70.0, 15.0), (170.0, -15.0)):  # patient right at low x
        ell = ((zz - 120) / 118) ** 2 + ((yy - 90) / 75) ** 2 + ((xx - xc) / 52) ** 2 <= 1
        dome = (zz + 25) ** 2 + (yy - 80) ** 2 + (xx - xc - medial) ** 2 <= 85 ** 2
        masks.append(ell & ~dome & (zz > 8))
    right, left = masks
    hu = np.full(SHAPE, 40.0, np.float32)
    hu[left | right] = -850.0
    truth = np.zeros(SHAPE, np.uint8)
    for is_right, m in ((True, right), (False, left)):
        iz, iy, _ = np.nonzero(m)
        base, top = np.percentile(z[iz], [0.1, 99.9])
        ant, post = np.percentile(y[iy], [1, 99])
        h, d = top - base, post - ant
        (hp, dp), (ha, da) = PLANTED_MAJOR
        z0, y0, z1, y1 = base + ha * h, ant + da * d, base + hp * h, ant + dp * d
        slope = (z1 - z0) / (y1 - y0)
        dist = (zz - (z0 + slope * (yy - y0))) / np.sqrt(1 + slope ** 2)
        upper = m & (dist > 0)
        sheet = m & (np.abs(dist) < 0.7)
        if is_right:
            dh = zz - (base + PLANTED_HORIZONTAL * h)
            truth[m & ~upper] = Lobe.RIGHT_LOWER
            truth[upper & (dh > 0)] = Lobe.RIGHT_UPPER
            truth[upper & (dh <= 0)] = Lobe.RIGHT_MIDDLE
            sheet = sheet | (upper & (np.abs(dh) < 0.7))
        else:
            truth[upper] = Lobe.LEFT_UPPER
            truth[m & ~upper] = Lobe.LEFT_LOWER
        if fissures:
            hu[sheet] = -500.0
    # vessels: random straight tubes (radius 1.5-2.5 mm) inside the lungs
    lung = left | right
    pts = np.argwhere(lung)
    for _ in range(40):
        a, b = pts[rng.integers(len(pts), size=2)]
        n = int(np.abs(b - a).max()) + 1
        line = np.round(np.linspace(a, b, n)).astype(int)
        r = rng.uniform(1.5, 2.5)
        rz, ry = int(np.ceil(r / SPACING[0])), int(np.ceil(r / SPACING[1]))
        for dz in range(-rz, rz + 1):
            for dy in range(-ry, ry + 1):
                for dx in range(-ry, ry + 1):
                    if (dz * SPACING[0]) ** 2 + (dy * SPACING[1]) ** 2 + (dx * SPACING[2]) ** 2 <= r * r:
                        p = np.clip(line + (dz, dy, dx), 0, np.array(SHAPE) - 1)
                        hu[p[:, 0], p[:, 1], p[:, 2]] = np.where(lung[p[:, 0], p[:, 1], p[:, 2]], 30.0,
                                                                  hu[p[:, 0], p[:, 1], p[:, 2]])
    hu += rng.normal(0, 15, SHAPE).astype(np.float32)
    return Volume(hu.astype(np.int16), SPACING), left, right, truth


@pytest.fixture(scope="module")
def with_fissures():
    return _phantom(fissures=True)


@pytest.fixture(scope="module")
def without_fissures():
    return _phantom(fissures=False)


def test_boundaries_follow_planted_fissures(with_fissures):
    vol, left, right, truth = with_fissures
    res = segment_lobes(vol, left, right)
    assert res.cranial_end == "high"
    for lb, key in LOBE_KEYS.items():
        d = _dice(res.labels == lb, truth == lb)
        # the geometric model alone scores 0.67 (middle) to 0.93 here: 0.95 needs the fissures
        assert d > 0.95, (key, d, res.notes)
        assert res.method[key] == "fissure", (key, res.notes)
        assert res.confidence[key] == "high", (key, res.notes)
    assert res.labels.dtype == np.uint8
    assert not res.labels[~(left | right)].any()
    assert (res.labels[left | right] > 0).all()


def test_fallback_without_fissures(without_fissures):
    vol, left, right, truth = without_fissures
    res = segment_lobes(vol, left, right)
    total = (left | right).sum()
    frac = {key: (res.labels == lb).sum() / total for lb, key in LOBE_KEYS.items()}
    assert all(0.12 <= frac[k] <= 0.35 for k in ("left_upper", "left_lower", "right_upper", "right_lower")), frac
    assert 0.03 <= frac["right_middle"] <= 0.15, frac
    assert set(res.confidence.values()) == {"low"}
    assert set(res.method.values()) == {"geometric"}
    assert any("not found" in n for n in res.notes)


def test_orientation_detected_when_z_runs_caudally(without_fissures):
    vol, left, right, _ = without_fissures
    up = segment_lobes(vol, left, right, cranial_end=None, use_fissures=False)
    flipped = Volume(vol.hu[::-1].copy(), vol.spacing_mm)
    down = segment_lobes(flipped, left[::-1].copy(), right[::-1].copy(), cranial_end=None,
                         use_fissures=False)
    assert up.cranial_end == "high" and down.cranial_end == "low"
    agree = (down.labels[::-1] == up.labels)[left | right].mean()
    assert agree > 0.98


def test_thick_slices_use_the_fallback(without_fissures):
    vol, left, right, _ = without_fissures
    thick = Volume(vol.hu[::3].copy(), (SPACING[0] * 3, *SPACING[1:]))
    res = segment_lobes(thick, left[::3].copy(), right[::3].copy())
    assert set(res.method.values()) == {"geometric"}
    assert any("fissures unreliable" in n for n in res.notes)
    assert all((res.labels == lb).any() for lb in Lobe)


def test_cip_lobe_map_geometric_fallback(shared_data):
    sitk = pytest.importorskip("SimpleITK")
    path = shared_data / "chest_imaging_platform_ct64" / "crop_ct_interactiveLobeSegmentation.nrrd"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    img = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    region = sitk.GetArrayFromImage(img) % 256
    ref = np.zeros(region.shape, np.uint8)
    for code, lb in {4: Lobe.RIGHT_UPPER, 5: Lobe.RIGHT_MIDDLE, 6: Lobe.RIGHT_LOWER,
                     7: Lobe.LEFT_UPPER, 8: Lobe.LEFT_LOWER}.items():
        ref[region == code] = lb
    sx, sy, sz = img.GetSpacing()
    vol = Volume(np.full(ref.shape, -850, np.int16), (sz, sy, sx))  # CT not available
    left = (ref == Lobe.LEFT_UPPER) | (ref == Lobe.LEFT_LOWER)
    right = ref >= Lobe.RIGHT_UPPER
    res = segment_lobes(vol, left, right, cranial_end="high", use_fissures=False,
                        relative_height_span=(0.45, 0.65))
    dice = {key: _dice(res.labels == lb, ref == lb) for lb, key in LOBE_KEYS.items()}
    assert min(dice.values()) >= CIP_DICE_FLOOR, dice
    assert np.mean(list(dice.values())) >= CIP_MEAN_DICE_FLOOR, dice


def _load_series(folder):
    pydicom = pytest.importorskip("pydicom")
    files = sorted(folder.glob("*.dcm"))
    if not files:
        pytest.skip(f"missing {folder}")
    ds = [pydicom.dcmread(f) for f in files]
    # identity axial orientation: rows -> patient left (x), columns -> posterior (y); sorted by
    # ascending patient z (feet -> head) this is the canonical LPS array
    assert all([round(float(v)) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0] for d in ds)
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
    dz = float(np.median(np.diff([float(d.ImagePositionPatient[2]) for d in ds])))
    return Volume(hu.astype(np.int16), (dz, float(ds[0].PixelSpacing[0]), float(ds[0].PixelSpacing[1])))


def _real_case(folder):
    from segmentation.lungs import segment_lungs

    vol = _load_series(folder)
    lungs = segment_lungs(vol)
    return vol, lungs.left, lungs.right, segment_lobes(vol, lungs.left, lungs.right)


def _data_dir():
    from peers import shared_data_dir

    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set LUNGNODE_TEST_DATA)")
    return path


@pytest.fixture(scope="module")
def lidc():
    return _real_case(_data_dir() / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series")


@pytest.fixture(scope="module")
def normal002():
    return _real_case(_data_dir() / "covid_ct_md_samples" / "normal002")


# plausible lobe volume fractions of the lungs (textbook: RUL ~20 %, RML ~8-10 %, RLL ~25 %,
# LUL ~22-25 %, LLL ~20-22 %), wide enough for normal anatomical variation
FRACTION_RANGE = {"right_upper": (0.12, 0.30), "right_middle": (0.04, 0.16), "right_lower": (0.15, 0.32),
                  "left_upper": (0.15, 0.33), "left_lower": (0.12, 0.30)}
MIN_PLANE_RESIDUAL_MM = 2.5   # geometric (planar) model: <= 0.7 mm on both real cases
MAX_AXIAL_PATCH_FRACTION = 0.25  # geometric horizontal fissure: 1.0 (one axial patch)
BOUNDARIES = {"left_major": ({Lobe.LEFT_UPPER}, {Lobe.LEFT_LOWER}),
              "right_major": ({Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE}, {Lobe.RIGHT_LOWER}),
              "right_horizontal": ({Lobe.RIGHT_UPPER}, {Lobe.RIGHT_MIDDLE})}


def _check_anatomical_lobes(vol, left, right, res):
    lab = res.labels
    assert res.cranial_end == "high"
    assert res.airway_lobes == sorted(LOBE_KEYS.values()), res.notes
    assert set(res.method.values()) == {"bronchial"}, res.notes
    assert set(res.confidence.values()) == {"high"}, res.notes
    assert not lab[~(left | right)].any()
    assert (lab[left] > 0).all() and (lab[right] > 0).all()
    assert np.isin(lab[left], (Lobe.LEFT_UPPER, Lobe.LEFT_LOWER)).all()
    total = (lab > 0).sum()
    centre = {}
    for lb, key in LOBE_KEYS.items():
        m = lab == lb
        lo, hi = FRACTION_RANGE[key]
        assert lo <= m.sum() / total <= hi, (key, m.sum() / total, res.notes)
        comps, n = ndi.label(m, structure=np.ones((3, 3, 3), bool))
        largest = np.bincount(comps.ravel())[1:].max()
        assert largest >= 0.99 * m.sum(), (key, n, largest / m.sum())  # one connected lobe
        centre[lb] = np.argwhere(m).mean(axis=0) * np.asarray(vol.spacing_mm)
    z, y = 0, 1  # canonical: z up (superior), y back (posterior)
    assert centre[Lobe.RIGHT_UPPER][z] > centre[Lobe.RIGHT_LOWER][z]
    assert centre[Lobe.LEFT_UPPER][z] > centre[Lobe.LEFT_LOWER][z]
    assert centre[Lobe.RIGHT_MIDDLE][y] < centre[Lobe.RIGHT_LOWER][y] - 20  # middle lobe is anterior
    assert centre[Lobe.LEFT_LOWER][y] > centre[Lobe.LEFT_UPPER][y]


def _check_not_planar(vol, res):
    for name, (a, b) in BOUNDARIES.items():
        pts = boundary_points_mm(res.labels, a, b, vol.spacing_mm)
        resid = plane_residual_mm(pts)
        assert resid > MIN_PLANE_RESIDUAL_MM, (name, resid)
        area, frac = largest_axial_patch(res.labels, a, b, vol.spacing_mm)
        assert frac < MAX_AXIAL_PATCH_FRACTION, (name, area, frac)


def test_real_lidc_lobes_from_bronchi(lidc):
    _check_anatomical_lobes(*lidc)


def test_real_normal002_lobes_from_bronchi(normal002):
    _check_anatomical_lobes(*normal002)


def test_real_lobe_boundaries_are_not_planes(lidc, normal002):
    for vol, left, right, res in (lidc, normal002):
        _check_not_planar(vol, res)
    # the check can fail: the planar geometric model (airways off) fails it on the same data
    vol, left, right, _ = lidc
    geo = segment_lobes(vol, left, right, use_airways=False)
    with pytest.raises(AssertionError):
        _check_not_planar(vol, geo)


def test_thick_slices_fall_back_with_a_note(lidc):
    vol, left, right, _ = lidc
    thick = Volume(vol.hu[::2].copy(), (vol.spacing_mm[0] * 2, *vol.spacing_mm[1:]))  # 5 mm
    res = segment_lobes(thick, left[::2].copy(), right[::2].copy())
    assert any("airway tree not traced" in n for n in res.notes), res.notes
    assert set(res.confidence.values()) == {"low"}
    assert set(res.method.values()) == {"geometric"}
    assert all((res.labels == lb).any() for lb in Lobe)


def test_no_trachea_falls_back_with_a_note(without_fissures):
    vol, left, right, _ = without_fissures  # synthetic lungs: no airways at all
    res = segment_lobes(vol, left, right)
    assert any("trachea not found" in n for n in res.notes), res.notes
    assert res.airway_lobes == []
    assert set(res.confidence.values()) == {"low"}
    assert all((res.labels == lb).any() for lb in Lobe)
