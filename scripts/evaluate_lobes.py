"""Check segmentation.lobes against the lobe label maps in the shared data, and on real LIDC.

    .venv/bin/python scripts/evaluate_lobes.py [--data DIR] [--timing] [--json FILE]

Prints per-lobe Dice for each reference; on the real whole chest CTs LIDC-IDRI-0001 and
COVID-CT-MD normal002 (no lobe labels) the lobe volume fractions, which model each lung used
(bronchial / fissure / geometric) and the boundary shape (plane residual, largest axial patch;
see segmentation/lobe_geometry.py) of this method and of the planar geometric model; with
--timing, the run time of segment_lobes on a 300 x 512 x 512 volume (LIDC resampled to 300
slices; benchmarks/lobes.py compares it with another revision). Caveats (also printed):

- No reference here is human ground truth on a full chest CT. TotalSegmentator's map is a
  model output on a 3 mm scan that holds only the lung bases (a few thousand lobe voxels, no
  right upper lobe); CIP's map is a semi-automatic (interactive) lobe segmentation of a 48 mm
  slab around the hila whose CT is not available.
- CIP: without the CT only the geometric fallback can be evaluated, with lung mask = union of
  the lobe labels; the slab's position in the lung is not recorded, so the fallback is given
  an assumed relative height span (and the Dice for other spans is printed to show how much
  that assumption matters).
- TotalSegmentator: 3 mm slices -> fissures are not searched (geometric fallback); the lungs
  are cut by the field of view, so the model's extents are guesses; orientation is passed in
  from the NIfTI header.
- LIDC-IDRI-0001 and normal002 have no lobe labels; the geometric model's four constants were
  set on LIDC's lobe fractions, so its fractions there are a consistency check, not a
  validation. The bronchial model has no constant fitted to any of these cases' lobes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segmentation.lobe_geometry import (  # noqa: E402
    boundary_points_mm,
    largest_axial_patch,
    plane_residual_mm,
)
from segmentation.lobes import segment_lobes  # noqa: E402
from segmentation.types import LOBE_KEYS, Lobe, Volume  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIP_LOBES = {4: Lobe.RIGHT_UPPER, 5: Lobe.RIGHT_MIDDLE, 6: Lobe.RIGHT_LOWER, 7: Lobe.LEFT_UPPER, 8: Lobe.LEFT_LOWER}
TS_LOBES = {10: Lobe.LEFT_UPPER, 11: Lobe.LEFT_LOWER, 12: Lobe.RIGHT_UPPER, 13: Lobe.RIGHT_MIDDLE,
            14: Lobe.RIGHT_LOWER}
CIP_ASSUMED_SPAN = (0.45, 0.65)
CIP_SPAN_SWEEP = ((0.35, 0.55), (0.40, 0.60), (0.45, 0.65), (0.50, 0.70), (0.55, 0.75))


def read_lps(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Array (z, y, x) reoriented so x -> patient left, y -> posterior, z -> superior."""
    img = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    sx, sy, sz = img.GetSpacing()
    return sitk.GetArrayFromImage(img), (sz, sy, sx)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * int((a & b).sum()) / s


def per_lobe_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    return {LOBE_KEYS[lb]: dice(pred == lb, ref == lb) for lb in Lobe}


def to_lobes(raw: np.ndarray, table: dict[int, Lobe], modulo: int | None = None) -> np.ndarray:
    region = raw % modulo if modulo else raw
    out = np.zeros(raw.shape, np.uint8)
    for code, lb in table.items():
        out[region == code] = lb
    return out


def cip_reference(data: Path) -> dict:
    raw, spacing = read_lps(data / "chest_imaging_platform_ct64" / "crop_ct_interactiveLobeSegmentation.nrrd")
    ref = to_lobes(raw, CIP_LOBES, modulo=256)  # 516-520 = airway inside a lobe: counts as that lobe
    left = (ref == Lobe.LEFT_UPPER) | (ref == Lobe.LEFT_LOWER)
    right = (ref >= Lobe.RIGHT_UPPER)
    vol = Volume(np.full(ref.shape, -850, np.int16), spacing)  # no CT: geometry only
    out = {"spacing_mm": spacing, "shape": ref.shape, "assumed_span": CIP_ASSUMED_SPAN, "sweep": {}}
    for span in CIP_SPAN_SWEEP:
        res = segment_lobes(vol, left, right, cranial_end="high", use_fissures=False, relative_height_span=span)
        out["sweep"][f"{span[0]:.2f}-{span[1]:.2f}"] = per_lobe_dice(res.labels, ref)
        if span == CIP_ASSUMED_SPAN:
            out["dice"] = per_lobe_dice(res.labels, ref)
            out["confidence"] = res.confidence
    res = segment_lobes(vol, left, right, cranial_end="high", use_fissures=False)
    out["dice_own_extent"] = per_lobe_dice(res.labels, ref)
    return out


def ts_reference(data: Path) -> dict:
    folder = data / "totalsegmentator_examples"
    hu, spacing = read_lps(folder / "example_ct_sm.nii.gz")
    raw, _ = read_lps(folder / "example_seg.nii.gz")
    ref = to_lobes(raw, TS_LOBES)
    left = (ref == Lobe.LEFT_UPPER) | (ref == Lobe.LEFT_LOWER)
    right = ref >= Lobe.RIGHT_UPPER
    res = segment_lobes(Volume(hu.astype(np.int16), spacing), left, right, cranial_end="high")
    return {"spacing_mm": spacing, "shape": hu.shape, "dice": per_lobe_dice(res.labels, ref),
            "ref_voxels": {LOBE_KEYS[lb]: int((ref == lb).sum()) for lb in Lobe},
            "pred_voxels": {LOBE_KEYS[lb]: int((res.labels == lb).sum()) for lb in Lobe},
            "notes": res.notes}


def load_lidc(folder: Path) -> Volume:
    """A plain axial series folder (LIDC, COVID-CT-MD) as an LPS Volume (z ascending = cranial).

    Only the identity axial orientation (1,0,0,0,1,0) is accepted: it already is LPS.
    """
    import pydicom

    ds = [pydicom.dcmread(str(f)) for f in sorted(folder.glob("*.dcm"))]
    for d in ds:
        if [round(float(v)) for v in d.ImageOrientationPatient] != [1, 0, 0, 0, 1, 0]:
            raise ValueError(f"{folder}: not an identity axial orientation: {d.ImageOrientationPatient}")
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
                   for d in ds]).astype(np.int16)
    dz = float(np.median(np.diff([float(d.ImagePositionPatient[2]) for d in ds])))
    return Volume(hu, (dz, float(ds[0].PixelSpacing[0]), float(ds[0].PixelSpacing[1])))


BOUNDARIES = {"left_major": ({Lobe.LEFT_UPPER}, {Lobe.LEFT_LOWER}),
              "right_major": ({Lobe.RIGHT_UPPER, Lobe.RIGHT_MIDDLE}, {Lobe.RIGHT_LOWER}),
              "right_horizontal": ({Lobe.RIGHT_UPPER}, {Lobe.RIGHT_MIDDLE})}


def boundary_shape(labels: np.ndarray, spacing) -> dict:
    out = {}
    for name, (a, b) in BOUNDARIES.items():
        area, frac = largest_axial_patch(labels, a, b, spacing)
        out[name] = {"plane_residual_mm": plane_residual_mm(boundary_points_mm(labels, a, b, spacing)),
                     "largest_axial_patch_mm2": area, "largest_axial_patch_fraction": frac}
    return out


def real_check(folder: Path, timing: bool) -> dict:
    from segmentation.lungs import segment_lungs

    vol = load_lidc(folder)
    lungs = segment_lungs(vol)
    t0 = time.perf_counter()
    res = segment_lobes(vol, lungs.left, lungs.right)
    secs = time.perf_counter() - t0
    total = int((res.labels > 0).sum())
    geo = segment_lobes(vol, lungs.left, lungs.right, use_airways=False)
    out = {"shape": vol.hu.shape, "seconds": secs, "cranial_end": res.cranial_end,
           "fractions_pct": {LOBE_KEYS[lb]: 100.0 * int((res.labels == lb).sum()) / total for lb in Lobe},
           "confidence": res.confidence, "method": res.method, "notes": res.notes,
           "shape_this": boundary_shape(res.labels, vol.spacing_mm),
           "shape_geometric": boundary_shape(geo.labels, vol.spacing_mm),
           "dice_vs_geometric": per_lobe_dice(res.labels, geo.labels)}
    if timing:  # 300 x 512 x 512: LIDC resampled (nearest) to 300 slices of 1.11 mm
        idx = (np.arange(300) * vol.hu.shape[0] / 300).astype(int)
        big = Volume(vol.hu[idx], (vol.spacing_mm[0] * vol.hu.shape[0] / 300, *vol.spacing_mm[1:]))
        t0 = time.perf_counter()
        segment_lobes(big, lungs.left[idx], lungs.right[idx])
        out["seconds_300x512x512"] = time.perf_counter() - t0
    return out


def _print_real(name: str, r: dict) -> None:
    print(f"== {name} (no lobe labels): lobe fractions of total lung volume, %")
    print("  " + "  ".join(f"{k}={v:.1f}" for k, v in r["fractions_pct"].items()))
    print("  anatomy: right_upper ~20, right_middle ~8-10, right_lower ~25, left_upper ~22-25, left_lower ~20-22")
    print(f"  method {r['method']}")
    print(f"  confidence {r['confidence']}")
    print(f"  notes {r['notes']}")
    print("  boundary shape: plane residual mm / largest axial patch (cm^2, fraction of the boundary)")
    for model in ("this", "geometric"):
        print(f"    {model:<10} " + "  ".join(
            f"{k}: {v['plane_residual_mm']:.1f} mm / {v['largest_axial_patch_mm2'] / 100:.1f} cm2 "
            f"({v['largest_axial_patch_fraction']:.2f})" for k, v in r[f"shape_{model}"].items()))
    print(f"  Dice of this method vs the geometric model: {_fmt(r['dice_vs_geometric'])}")
    print(f"  segment_lobes {r['seconds']:.2f} s on {r['shape']}")
    if "seconds_300x512x512" in r:
        print(f"  segment_lobes {r['seconds_300x512x512']:.2f} s on (300, 512, 512)")


def _fmt(d: dict[str, float | None]) -> str:
    return "  ".join(f"{k}={'n/a' if v is None else f'{v:.3f}'}" for k, v in d.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--timing", action="store_true", help="also time a 300x512x512 volume")
    ap.add_argument("--json", type=Path, help="write all figures to this file")
    args = ap.parse_args(argv)

    results = {"cip": cip_reference(args.data), "totalsegmentator": ts_reference(args.data),
               "lidc": real_check(args.data / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series",
                                  args.timing),
               "normal002": real_check(args.data / "covid_ct_md_samples" / "normal002", False)}
    cip, ts = results["cip"], results["totalsegmentator"]
    print("== CIP interactive lobe map (48 mm slab, semi-automatic; geometric fallback only, lung = union)")
    print(f"  assumed slab span {cip['assumed_span']}: {_fmt(cip['dice'])}")
    for span, d in cip["sweep"].items():
        print(f"    span {span}: {_fmt(d)}")
    print(f"  slab taken as the whole lung (no span given): {_fmt(cip['dice_own_extent'])}")
    print("== TotalSegmentator example (model output, 3 mm, lung bases only, no trachea: geometric fallback)")
    print(f"  {_fmt(ts['dice'])}")
    print(f"  reference voxels: {ts['ref_voxels']}")
    print(f"  predicted voxels: {ts['pred_voxels']}")
    print(f"  notes {ts['notes']}")
    _print_real("LIDC-IDRI-0001 (2.5 mm)", results["lidc"])
    _print_real("COVID-CT-MD normal002 (2 mm)", results["normal002"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
