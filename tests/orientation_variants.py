"""Test helper: the same anatomy stored in another valid orientation (new DICOM files).

``write_variant`` takes an axial head-first-supine series (Image Orientation (Patient)
1,0,0,0,1,0) and writes the same voxels as a new series whose rows, columns and slices run
along other (signed) patient axes: feet-first, prone, mirrored, transposed in-plane,
sagittal or coronal stacks. The pixel data are resampled from physics alone (each new
voxel takes the stored value of the source voxel at the same patient position), never
through node.volume's own reorientation code, so the tests compare two independent paths.
Every written file is a valid CT Image Storage instance with fresh Series/SOP Instance UIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

#: name -> (row cosines, column cosines, Patient Position)
VARIANTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "head_first_supine": ((1, 0, 0), (0, 1, 0), "HFS"),
    "feet_first_supine_mirrored": ((-1, 0, 0), (0, 1, 0), "FFS"),
    "head_first_prone": ((-1, 0, 0), (0, -1, 0), "HFP"),
    "feet_first_prone": ((1, 0, 0), (0, -1, 0), "FFP"),
    "transposed": ((0, 1, 0), (1, 0, 0), "HFS"),
    "sagittal": ((0, 1, 0), (0, 0, -1), "HFS"),
    "coronal": ((1, 0, 0), (0, 0, -1), "HFS"),
}


def _axis(vector) -> tuple[int, int]:
    """(LPS axis index 0..2, sign) of a signed unit axis vector."""
    v = np.asarray(vector)
    j = int(np.flatnonzero(v)[0])
    return j, int(np.sign(v[j]))


def write_variant(source_files: list[Path], out_dir: Path, name: str) -> list[Path]:
    """Write the source series (axial HFS) as variant ``name`` of VARIANTS into ``out_dir``."""
    row_cos, col_cos, position = VARIANTS[name]
    normal = np.cross(row_cos, col_cos)
    headers = [pydicom.dcmread(p) for p in source_files]
    for ds in headers:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        if np.max(np.abs(np.array(iop) - [1, 0, 0, 0, 1, 0])) > 1e-6:
            raise ValueError(f"source must be axial HFS, got {iop}")
        if (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))) != (
                float(headers[0].get("RescaleSlope", 1)), float(headers[0].get("RescaleIntercept", 0))):
            raise ValueError("source slices differ in rescale")
    headers.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    # reference stored volume ref[iz, iy, ix]; voxel (iz, iy, ix) sits at (x0+ix*dx, y0+iy*dy, z_iz)
    ref = np.stack([ds.pixel_array for ds in headers])
    x0, y0 = (float(v) for v in headers[0].ImagePositionPatient[:2])
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in headers])
    dz = float((zs[-1] - zs[0]) / (len(zs) - 1))
    dy, dx = (float(v) for v in headers[0].PixelSpacing)
    lps_count = {0: ref.shape[2], 1: ref.shape[1], 2: ref.shape[0]}   # x, y, z
    lps_spacing = {0: dx, 1: dy, 2: dz}
    lps_start = {0: x0, 1: y0, 2: zs[0]}

    # variant axes: c along row_cos, r along col_cos, k along normal
    axes = {"c": _axis(row_cos), "r": _axis(col_cos), "k": _axis(normal)}
    counts = {key: lps_count[j] for key, (j, _) in axes.items()}

    def ref_index(key: str, i: np.ndarray) -> np.ndarray:
        j, sign = axes[key]
        return i if sign > 0 else lps_count[j] - 1 - i

    kk, rr, cc = np.meshgrid(np.arange(counts["k"]), np.arange(counts["r"]),
                             np.arange(counts["c"]), indexing="ij")
    ref_idx = [None, None, None]  # per LPS axis x, y, z
    for key, grid in (("k", kk), ("r", rr), ("c", cc)):
        ref_idx[axes[key][0]] = ref_index(key, grid)
    variant = ref[ref_idx[2], ref_idx[1], ref_idx[0]]

    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    template = headers[0]
    written = []
    for k in range(counts["k"]):
        # patient position of variant voxel (k, 0, 0)
        ipp = [0.0, 0.0, 0.0]
        for key, i in (("k", k), ("r", 0), ("c", 0)):
            j, _ = axes[key]
            ipp[j] = lps_start[j] + float(ref_index(key, np.array(i))) * lps_spacing[j]
        ds = pydicom.dcmread(source_files[0])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [round(v, 6) for v in ipp]  # exact for these grids
        ds.PatientPosition = position
        ds.PixelSpacing = [lps_spacing[axes["r"][0]], lps_spacing[axes["c"][0]]]
        ds.SliceThickness = lps_spacing[axes["k"][0]]
        ds.SliceLocation = round(float(np.dot(ipp, normal)), 6)
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = counts["r"], counts["c"]
        frame = np.ascontiguousarray(variant[k]).astype(template.pixel_array.dtype)
        ds.PixelData = frame.tobytes()
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "WindowCenter",
                        "WindowWidth"):
            if keyword in ds and keyword.endswith("PixelValue"):
                del ds[keyword]
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def physical_points(seg_pixels: np.ndarray, headers: list[pydicom.Dataset], origin_xyz,
                    spacing_xyz) -> set[tuple[int, int, int]]:
    """The set voxels of a (k, r, c) mask on ``headers`` as patient positions, each given as
    its index (ix, iy, iz) on a reference axial grid (origin and spacing in LPS x, y, z mm)."""
    origin = np.asarray(origin_xyz, dtype=np.float64)
    spacing = np.asarray(spacing_xyz, dtype=np.float64)
    points: set[tuple[int, int, int]] = set()
    for k, ds in enumerate(headers):
        rows, cols = np.nonzero(seg_pixels[k])
        if rows.size == 0:
            continue
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        xyz = ipp + np.outer(rows * dr, iop[3:]) + np.outer(cols * dc, iop[:3])
        grid = np.rint((xyz - origin) / spacing).astype(int)
        points.update(map(tuple, grid))
    return points
