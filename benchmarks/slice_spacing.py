"""The same lung at other slice spacings and pixel sizes: what the default analysis reports.

A hospital routes whichever reconstruction its protocol sends (1-1.25 mm thin slices, the
2.5 mm or 5 mm "standard" series), and a patient's serial scans may come with different ones;
the numbers should not depend on it. The real LIDC-IDRI-0001 series (133 x 512 x 512, 2.5 mm
slices, one 21 mm solid nodule, no pneumonia) is analysed as stored, as 5 mm slices (the mean
of each pair of slices: a thicker reconstruction of the same data, SliceThickness 5) and as
1.25 mm slices (linear interpolation between slices, SliceThickness 1.25: this has the 2.5 mm
series' resolution along z, so it tests the node's handling of the spacing, not what a real
thin reconstruction would show), and in-plane as 768 x 768 (0.47 mm pixels) and 256 x 256
(1.41 mm pixels) by linear resampling, the field of view unchanged. Each is written as DICOM
with the source headers and run through node.analysis.analyze_series with the embedded
default config (pictures off).

Printed per spacing: lung volume (and its difference from 2.5 mm), each lobe's volume,
lesion volume and percent, CT score, involved lobes, and what the lesion components were
classified as (quant.involvement). A benchmark, not a test: it prints figures.

    .venv/bin/python benchmarks/slice_spacing.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
LOBE_KEYS = ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower")


def write_variants(out: Path) -> dict[str, Path]:
    """{label: series folder} for 1.25, 2.5 (the stored files) and 5 mm slices, and for
    768 x 768 and 256 x 256 pixels."""
    from scipy import ndimage as ndi

    from stages import lidc_files, lidc_headers, write_series

    headers = lidc_headers()
    stored = np.stack([d.pixel_array for d in headers]).astype(np.float32)
    z0 = float(headers[0].ImagePositionPatient[2])
    dz = (float(headers[-1].ImagePositionPatient[2]) - z0) / (len(headers) - 1)
    pairs = len(headers) // 2
    thick = stored[:2 * pairs].reshape(pairs, 2, *stored.shape[1:]).mean(axis=1)
    thin = ndi.zoom(stored, (2, 1, 1), order=1, grid_mode=True, mode="nearest")
    write_series(headers, thin, [z0 - dz / 4 + k * dz / 2 for k in range(thin.shape[0])],
                 out / "t125", thickness_mm=dz / 2)
    write_series(headers, thick, [z0 + (2 * k + 0.5) * dz for k in range(pairs)], out / "t5",
                 thickness_mm=2 * dz)
    variants = {"1.25 mm": out / "t125", f"{dz:g} mm": lidc_files()[0].parent, "5 mm": out / "t5"}
    pixel = float(headers[0].PixelSpacing[0])
    for n in (768, 256):
        f = n / stored.shape[1]
        resampled = ndi.zoom(stored, (1, f, f), order=1, grid_mode=True, mode="nearest")
        write_series(headers, resampled, [z0 + k * dz for k in range(len(headers))], out / f"p{n}",
                     pixel_mm=pixel / f)
        variants[f"{n}x{n}, {dz:g} mm"] = out / f"p{n}"
    return variants


def analyse(folder: Path, out: Path) -> dict:
    from node.analysis import analyze_series
    from node.config import load_settings

    settings = load_settings(None, overrides={"outputs": {"pdf": False, "summary": False,
                                                          "overlay": False}})
    result = analyze_series(sorted(folder.glob("*.dcm")), out, settings)
    m = result.measurements
    return {
        "slices": len(list(folder.glob("*.dcm"))),
        "lung_ml": round(m.lung_volume_ml, 1),
        "lobes_ml": {k: round(m.lobes[k].volume_ml, 1) for k in LOBE_KEYS} if m.lobes else None,
        "lesion_ml": round(m.lesion_volume_ml, 2),
        "lesion_pct": round(m.lesion_pct, 3),
        "ct_score": m.ct_score,
        "involved_lobes": m.involved_lobes,
        "excluded": dict(Counter(c.kind for c in m.excluded_lesions)),
        "nodules_ml": [round(c.volume_ml, 2) for c in m.excluded_lesions if c.kind == "nodule"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        variants = write_variants(Path(tmp))
        figures = {label: analyse(folder, Path(tmp) / f"out{i}")
                   for i, (label, folder) in enumerate(variants.items())}
    reference = figures[list(variants)[1]]
    print("LIDC-IDRI-0001 at other slice spacings and pixel sizes, default analysis")
    for label, f in figures.items():
        lung_diff = 100 * (f["lung_ml"] / reference["lung_ml"] - 1)
        print(f"{label:>16s}: {f['slices']} slices, lung {f['lung_ml']:.0f} ml ({lung_diff:+.2f} %), "
              f"lesions {f['lesion_ml']:.2f} ml ({f['lesion_pct']:.3f} %), CT score "
              f"{f['ct_score']}, involved lobes {f['involved_lobes']}, nodules {f['nodules_ml']} ml, "
              f"excluded {f['excluded']}")
        if f["lobes_ml"] and reference["lobes_ml"]:
            print("          lobes ml: " + ", ".join(
                f"{k} {v:.0f} ({100 * (v / reference['lobes_ml'][k] - 1):+.1f} %)"
                for k, v in f["lobes_ml"].items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
