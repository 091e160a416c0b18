"""A synthetic chest CT with known lung, GGO and consolidation volumes (for tests and benchmarks).

``phantom_volume`` builds the HU array and its truth; ``write_phantom`` also writes it as a CT
Image Storage series (Explicit VR Little Endian, one file per slice) plus ``truth.json``.

Anatomy (physical millimetres, LPS-like: x to the patient's left = increasing column, y to the
posterior = increasing row, z to the head = increasing slice index):

- body: elliptical cylinder 344 x 240 mm, soft tissue 40 HU with a subcutaneous fat layer
  (-100 HU), ribs (700 HU rings inside the body wall every ~25 mm), spine (400 HU), aorta, heart;
- two lungs (-850 HU, +/-15 HU texture, anterior-posterior gravity gradient of 30 HU): tapered
  ellipsoids with a diaphragmatic dome at the base (deeper on the right, the liver) and a
  cardiac impression on the left lung;
- airways: trachea (r 9 mm) from the top slice to the carina, two main bronchi and lobar
  bronchi inside the lungs, lumen -1000 HU, walls 1.5-2 mm of soft tissue;
- vessels: random branching trees (radius 5 mm at the hilum to ~1 mm), 40 HU, inside the lungs;
- lesions: textured GGO blobs (-600 HU +/-40) and consolidation blobs (-10 HU +/-25, air
  bronchograms kept), one dense consolidation lying against the lateral chest wall.

The image is blurred (Gaussian, 0.6 voxel in-plane: partial volume) and white noise (20 HU)
is added, then stored as int16 with RescaleIntercept -1024.

Truth is counted on the phantom's own label arrays (voxels x voxel volume): the lung is the
parenchyma including vessels, bronchial walls and lesions, excluding the airway lumen; GGO
excludes the vessels it contains; consolidation excludes air-bronchogram lumen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from node.uids import derive_uid
from segmentation.types import Volume

FOV_MM = 380.0          # in-plane field of view: 1.48 mm pixels at size 256
Z_EXTENT_MM = 300.0     # cranio-caudal extent: 2.5 mm slices at 120 slices
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024


@dataclass(frozen=True)
class _Lung:
    cx: float
    cy: float
    ax: float
    ay: float
    dome_mm: float


_RIGHT = _Lung(cx=-78.0, cy=5.0, ax=58.0, ay=88.0, dome_mm=45.0)   # patient's right: low x
_LEFT = _Lung(cx=82.0, cy=5.0, ax=55.0, ay=85.0, dome_mm=35.0)
_LUNG_Z0, _LUNG_Z1 = 25.0, 275.0


def _grid(slices: int, size: int):
    dxy = FOV_MM / size
    dz = Z_EXTENT_MM / slices
    x = ((np.arange(size) - size / 2 + 0.5) * dxy).astype(np.float32)
    y = ((np.arange(size) - size / 2 + 0.5) * dxy).astype(np.float32)
    z = ((np.arange(slices) + 0.5) * dz).astype(np.float32)
    return z, y, x, (dz, dxy, dxy)


def _lung_envelope(lung: _Lung, z, y, x) -> np.ndarray:
    t = np.clip((z - _LUNG_Z0) / (_LUNG_Z1 - _LUNG_Z0), 0.0, 1.0)
    scale = np.where(t <= 0.35, 1.0, np.sqrt(np.clip(1.0 - ((t - 0.35) / 0.65) ** 2, 0.0, 1.0)))
    scale = np.where((z >= _LUNG_Z0) & (z <= _LUNG_Z1), scale, 0.0).astype(np.float32)
    rho2 = ((x[None, None, :] - lung.cx) / lung.ax) ** 2 + ((y[None, :, None] - lung.cy) / lung.ay) ** 2
    inside = rho2 <= scale[:, None, None] ** 2
    base = _LUNG_Z0 + lung.dome_mm * np.clip(1.0 - rho2, 0.0, 1.0)
    return inside & (z[:, None, None] >= base)


def _smooth_field(shape, spacing, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-sd smooth random field, built on a coarse grid and interpolated."""
    step = max(sigma_mm / 2.0, min(spacing))
    coarse_shape = [max(4, int(np.ceil(n * s / step)) + 1) for n, s in zip(shape, spacing)]
    field = ndi.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma_mm / step)
    field /= field.std() + 1e-6
    zoom = [n / c for n, c in zip(shape, coarse_shape)]
    out = ndi.zoom(field, zoom, order=1, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1], : shape[2]]


def _capsule(mask: np.ndarray, p0, p1, radius: float, origin, spacing, value=True) -> None:
    """Set the voxels within ``radius`` mm of segment p0-p1 (points in mm, z-y-x)."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    idx_lo = [max(0, int(np.floor((lo[a] - origin[a]) / spacing[a]))) for a in range(3)]
    idx_hi = [min(mask.shape[a], int(np.ceil((hi[a] - origin[a]) / spacing[a])) + 1) for a in range(3)]
    if any(high <= low for low, high in zip(idx_lo, idx_hi)):
        return
    coords = [origin[a] + spacing[a] * np.arange(idx_lo[a], idx_hi[a], dtype=np.float32) for a in range(3)]
    d = p1 - p0
    dd = float(d @ d) or 1e-6
    rel = [coords[0][:, None, None] - p0[0], coords[1][None, :, None] - p0[1], coords[2][None, None, :] - p0[2]]
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / dd, 0.0, 1.0)
    dist2 = (rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2
    sub = mask[idx_lo[0]:idx_hi[0], idx_lo[1]:idx_hi[1], idx_lo[2]:idx_hi[2]]
    sub[dist2 <= radius * radius] = value


def _vessel_tree(rng, root, direction, radius, depth, segments) -> None:
    length = rng.uniform(25.0, 45.0) * (0.8 ** (4 - depth) if depth < 4 else 1.0)
    direction = direction / np.linalg.norm(direction)
    end = root + direction * length
    segments.append((root, end, radius))
    if depth == 0:
        return
    for _ in range(int(rng.integers(2, 4))):
        child = direction + rng.normal(0.0, 0.55, 3)
        _vessel_tree(rng, end, child, radius * 0.72, depth - 1, segments)


def phantom_volume(seed: int = 0, slices: int = 120, size: int = 256,
                   lesion_scale: float = 1.0) -> tuple[Volume, dict]:
    """Build the phantom: (Volume with int16 HU, truth dict of volumes in ml)."""
    volume, truth, _ = phantom_with_labels(seed=seed, slices=slices, size=size,
                                           lesion_scale=lesion_scale)
    return volume, truth


def phantom_with_labels(seed: int = 0, slices: int = 120, size: int = 256,
                        lesion_scale: float = 1.0) -> tuple[Volume, dict, dict]:
    """As phantom_volume, plus the label arrays (bool, z-y-x): lung, left, right, airway_lumen,
    vessel, ggo, consolidation, pleural_consolidation.

    lesion_scale multiplies every lesion's radii (same seed: same lesions in the same places,
    grown or shrunk: serial scans of one patient); 0 gives no lesions."""
    if slices < 40 or size < 128:
        raise ValueError("the phantom needs at least 40 slices and 128 x 128 pixels")
    rng = np.random.default_rng(seed)
    z, y, x, spacing = _grid(slices, size)
    origin = (float(z[0]), float(y[0]), float(x[0]))
    shape = (slices, size, size)
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]

    # --- body ---------------------------------------------------------------------------
    body_r2 = (xx / 172.0) ** 2 + (yy / 120.0) ** 2          # (1, y, x)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body2d = body_r2 <= 1.0
    hu[:, body2d[0]] = 40.0
    fat2d = (body_r2 > 0.85) & body2d
    hu[:, fat2d[0]] = -100.0
    rib_ring = ((body_r2 > 0.80) & (body_r2 <= 0.83))[0]
    for zc in np.arange(_LUNG_Z0 + 5.0, Z_EXTENT_MM, 24.0):
        ks = np.nonzero(np.abs(z - zc) <= 5.0)[0]
        ring = rib_ring & (yy[0] > -100.0)                   # no ribs over the sternum gap
        for k in ks:
            hu[k][ring] = 700.0
    spine = ((xx / 22.0) ** 2 + ((yy - 88.0) / 20.0) ** 2) <= 1.0
    hu[:, spine[0]] = 400.0
    aorta = (((xx - 28.0) / 12.0) ** 2 + ((yy - 58.0) / 12.0) ** 2) <= 1.0
    hu[:, aorta[0]] = 40.0

    # --- lungs ----------------------------------------------------------------------------
    right = _lung_envelope(_RIGHT, z, y, x)
    left = _lung_envelope(_LEFT, z, y, x)
    heart = (((xx - 15.0) / 62.0) ** 2 + ((yy + 22.0) / 50.0) ** 2 + ((zz - 95.0) / 60.0) ** 2) <= 1.0
    right &= ~heart
    left &= ~heart
    envelope = right | left
    hu[heart] = 40.0

    # --- airways (lumen and wall) ---------------------------------------------------------
    lumen = np.zeros(shape, bool)
    wall = np.zeros(shape, bool)
    carina = (185.0, -10.0, 2.0)
    airway_segments = [
        ((Z_EXTENT_MM + 10.0, -12.0, 2.0), carina, 9.0, 2.0),
        (carina, (150.0, 0.0, -40.0), 6.5, 1.8),
        (carina, (145.0, 0.0, 45.0), 5.5, 1.8),
        ((150.0, 0.0, -40.0), (115.0, -8.0, -68.0), 4.0, 1.5),
        ((150.0, 0.0, -40.0), (180.0, 12.0, -66.0), 3.5, 1.5),
        ((145.0, 0.0, 45.0), (110.0, 10.0, 75.0), 3.5, 1.5),
        ((145.0, 0.0, 45.0), (180.0, -5.0, 72.0), 3.2, 1.5),
    ]
    for p0, p1, r, w in airway_segments:
        _capsule(wall, p0, p1, r + w, origin, spacing)
    for p0, p1, r, _wall in airway_segments:
        _capsule(lumen, p0, p1, r, origin, spacing)
    wall &= ~lumen

    # --- vessels --------------------------------------------------------------------------
    vessel_tube = np.zeros(shape, bool)
    for hilum, toward in (((150.0, 12.0, -30.0), (-0.2, 0.1, -1.0)), ((145.0, 12.0, 35.0), (-0.2, 0.1, 1.0))):
        for main_dir in (np.array([1.0, 0.0, 0.0]), np.array([-1.0, 0.2, 0.0]), np.array([0.0, 0.8, 0.0])):
            segs: list = []
            _vessel_tree(rng, np.array(hilum, np.float32), main_dir + np.array(toward), 4.5, 3, segs)
            for p0, p1, r in segs:
                _capsule(vessel_tube, p0, p1, max(r, 0.9), origin, spacing)
    vessel = vessel_tube & envelope & ~lumen & ~wall

    # --- lesions --------------------------------------------------------------------------
    shape_field = _smooth_field(shape, spacing, 8.0, rng)
    lesion_texture = _smooth_field(shape, spacing, 3.0, rng)
    parenchyma_texture = _smooth_field(shape, spacing, 4.0, rng)

    def blob(center, radii) -> np.ndarray:
        out = np.zeros(shape, bool)
        radii = tuple(r * lesion_scale for r in radii)
        if lesion_scale <= 0:
            return out
        lo = [max(0, int((center[a] - radii[a] * 1.4 - origin[a]) / spacing[a])) for a in range(3)]
        hi = [min(shape[a], int((center[a] + radii[a] * 1.4 - origin[a]) / spacing[a]) + 2) for a in range(3)]
        sl = tuple(slice(lo[a], hi[a]) for a in range(3))
        d2 = (((z[sl[0]] - center[0]) / radii[0])[:, None, None] ** 2
              + ((y[sl[1]] - center[1]) / radii[1])[None, :, None] ** 2
              + ((x[sl[2]] - center[2]) / radii[2])[None, None, :] ** 2)
        out[sl] = np.sqrt(d2) <= 1.0 + 0.22 * shape_field[sl]  # noqa: F821 (deleted only after the last call)
        return out

    def inside_point(lung: _Lung, mask: np.ndarray, peripheral: bool) -> tuple[float, float, float]:
        for _ in range(200):
            zc = rng.uniform(70.0, 230.0)
            ang = rng.uniform(0, 2 * np.pi)
            frac = rng.uniform(0.75, 0.95) if peripheral else rng.uniform(0.1, 0.6)
            c = (zc, lung.cy + lung.ay * frac * np.sin(ang), lung.cx + lung.ax * frac * np.cos(ang))
            k, j, i = (int((c[a] - origin[a]) / spacing[a]) for a in range(3))
            if mask[k, j, i]:
                return c
        raise RuntimeError("could not place a lesion")

    ggo_blob = np.zeros(shape, bool)
    for lung, mask, peripheral in ((_RIGHT, right, True), (_RIGHT, right, True), (_LEFT, left, True),
                                   (_LEFT, left, False), (_RIGHT, right, False)):
        r = rng.uniform(14.0, 24.0)
        ggo_blob |= blob(inside_point(lung, mask, peripheral), (r * 0.9, r, r * 1.1))
    cons_blob = np.zeros(shape, bool)
    for lung, mask in ((_LEFT, left), (_RIGHT, right)):
        r = rng.uniform(12.0, 17.0)
        cons_blob |= blob(inside_point(lung, mask, False), (r, r, r))
    # dense consolidation against the lateral chest wall of the right lung (mid height)
    zc = 130.0
    pleural_blob = blob((zc, _RIGHT.cy + 15.0, _RIGHT.cx - _RIGHT.ax + 6.0), (22.0, 28.0, 18.0))
    cons_blob |= pleural_blob

    consolidation = cons_blob & envelope & ~lumen
    ggo = ggo_blob & envelope & ~lumen & ~wall & ~vessel & ~consolidation
    lung = envelope & ~lumen

    # --- HU -------------------------------------------------------------------------------
    gradient = 30.0 * (yy - 5.0) / 90.0
    lung_hu = -850.0 + gradient + 15.0 * parenchyma_texture
    hu = np.where(envelope, lung_hu, hu)
    hu[vessel] = 40.0
    hu[wall] = 40.0
    hu[lumen] = -1000.0
    hu = np.where(ggo, -600.0 + 40.0 * lesion_texture, hu)
    hu = np.where(consolidation, -10.0 + 25.0 * lesion_texture, hu)
    del shape_field, lesion_texture, parenchyma_texture, lung_hu

    ndi.gaussian_filter(hu, sigma=(0.3, 0.6, 0.6), output=hu)
    hu += rng.normal(0.0, 20.0, shape).astype(np.float32)
    stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, 0, 4095)
    hu_int = (stored + RESCALE_INTERCEPT).astype(np.int16)

    vml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    truth = {
        "seed": seed,
        "lesion_scale": lesion_scale,
        "slices": slices,
        "size": size,
        "spacing_mm": [float(s) for s in spacing],
        "lung_volume_ml": float(lung.sum() * vml),
        "left_lung_volume_ml": float((lung & left).sum() * vml),
        "right_lung_volume_ml": float((lung & right).sum() * vml),
        "ggo_volume_ml": float(ggo.sum() * vml),
        "consolidation_volume_ml": float(consolidation.sum() * vml),
        "lesion_volume_ml": float((ggo | consolidation).sum() * vml),
        "airway_lumen_in_lung_envelope_ml": float((envelope & lumen).sum() * vml),
        "pleural_consolidation": "right lung, lateral chest wall, z 110-150 mm",
        "orientation": "z: feet->head (index 0 = feet); y: anterior->posterior; x: patient right->left",
    }
    labels = {"lung": lung, "left": lung & left, "right": lung & right, "airway_lumen": lumen,
              "vessel": vessel, "ggo": ggo, "consolidation": consolidation,
              "pleural_consolidation": pleural_blob & consolidation}
    return Volume(hu=hu_int, spacing_mm=tuple(float(s) for s in spacing)), truth, labels


def _uid(seed: int, slices: int, size: int, *what: object) -> str:
    return derive_uid("lungnode-phantom", seed, slices, size, *what)


def write_phantom(out_dir: Path, seed: int = 0, slices: int = 120, size: int = 256, *,
                  lesion_scale: float = 1.0, patient_id: str | None = None,
                  study_date: str = "20200401") -> dict:
    """Write the phantom as CT_0001.dcm ... into out_dir, plus truth.json; return the truth.

    Serial scans of one patient: the same seed and ``patient_id`` with another
    ``study_date`` (YYYYMMDD) and ``lesion_scale`` give a new study (its own UIDs) of the
    same lungs with grown or shrunk lesions."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    volume, truth = phantom_volume(seed=seed, slices=slices, size=size, lesion_scale=lesion_scale)
    dz, dy, dx = volume.spacing_mm
    serial = () if (lesion_scale == 1.0 and patient_id is None and study_date == "20200401") \
        else (patient_id, study_date, lesion_scale)
    study_uid = _uid(seed, slices, size, *serial, "study")
    series_uid = _uid(seed, slices, size, *serial, "series")
    frame_uid = _uid(seed, slices, size, *serial, "frame")
    date = study_date
    x0 = -(size / 2 - 0.5) * dx
    y0 = -(size / 2 - 0.5) * dy
    for k in range(slices):
        sop_uid = _uid(seed, slices, size, *serial, "sop", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(out_dir / f"CT_{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
        ds.AccessionNumber = f"PH{seed:06d}"
        ds.Modality = "CT"
        ds.Manufacturer = "lungnode"
        ds.ManufacturerModelName = "synthetic phantom"
        ds.InstitutionName = "lungnode test"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Phantom chest CT"
        ds.SeriesDescription = "Phantom chest CT, lungs with GGO and consolidation"
        ds.PatientName = "Phantom^Lungnode"
        ds.PatientID = patient_id or f"PHANTOM-{seed}"
        ds.IssuerOfPatientID = "LUNGNODE-PHANTOM"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{dz:.4g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{(k + 0.5) * dz - Z_EXTENT_MM:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{(k + 0.5) * dz - Z_EXTENT_MM:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.PixelSpacing = [f"{dy:.6g}", f"{dx:.6g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        stored = (volume.hu[k].astype(np.int32) - RESCALE_INTERCEPT).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(out_dir / f"CT_{k + 1:04d}.dcm", enforce_file_format=True)
    truth = dict(truth, series_instance_uid=series_uid, study_instance_uid=study_uid,
                 patient_id=str(ds.PatientID), study_date=date, files=slices)
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=2), encoding="utf-8")
    return truth
