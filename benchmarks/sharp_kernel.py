"""The same scans as a sharp (lung-kernel) reconstruction: simulated on real series.

    .venv/bin/python benchmarks/sharp_kernel.py [--cases normal002,LIDC-IDRI-0001,P002]

No sharp-kernel series is available here (every one is GE STANDARD or Siemens B41s / D40s).
A sharp kernel is simulated in-plane on the stored HU: edge enhancement
``hu + gain * (hu - Gaussian_1px(hu))`` plus high-pass Gaussian noise inside the body (seeded),
"moderate" (gain 0.7, noise SD 50 HU) and "strong" (gain 1.5, 100 HU). Each variant runs the
default analysis with ``harmonize_kernel`` on and off (off is the default), and prints the lung
volume, lesion %, GGO / consolidation ml, CT score, the aerated-lung noise
(segmentation.harmonize.lung_noise_hu) and what the harmonisation did. P002 is also scored
against its COVID-CT-MD slice labels (25 mm², every lesion voxel and pneumonia components),
as `lungnode evaluate slices` does. About 4 minutes a case on a 2-core CPU. A benchmark,
not a test; segmentation/model_card/candidates/sharp_kernel.plan.md has its figures.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node.analysis import segment_configured  # noqa: E402
from node.config import load_settings  # noqa: E402
from node.evaluate_slices import read_labels, slice_labels  # noqa: E402
from node.volume import load_series  # noqa: E402
from quant.involvement import classify_lesions  # noqa: E402
from quant.measure import measure  # noqa: E402
from quant.slice_eval import evaluate, lesion_areas  # noqa: E402
from segmentation.harmonize import lung_noise_hu  # noqa: E402
from segmentation.types import Volume  # noqa: E402

DATA = REPO.parent / "shared" / "data"
CASES = {
    "normal002": DATA / "covid_ct_md_samples" / "normal002",
    "LIDC-IDRI-0001": DATA / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series",
    "P002": DATA / "covid_ct_md_samples" / "P002",
}
LABELS = DATA / "covid_ct_md_samples" / "labels.csv"
VARIANTS = (("as stored", 0.0, 0.0), ("sharp moderate", 0.7, 50.0), ("sharp strong", 1.5, 100.0))


def sharpen(hu: np.ndarray, gain: float, noise_sd: float, seed: int = 0) -> np.ndarray:
    """The simulated sharp reconstruction of ``hu`` (see the module docstring)."""
    hu = hu.astype(np.float32)
    out = hu + gain * (hu - ndi.gaussian_filter(hu, sigma=(0, 1.0, 1.0)))
    noise = np.random.default_rng(seed).standard_normal(hu.shape).astype(np.float32)
    noise -= ndi.gaussian_filter(noise, sigma=(0, 1.5, 1.5))
    noise *= noise_sd / noise.std()
    return np.clip(np.round(out + noise * (hu > -900)), -1024, 3071).astype(np.int16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Invalid value for VR UI")
    print("case | variant | harmonize | lung ml | lesion % | GGO ml | cons ml | CT score | "
          "noise HU | note | slice sens/spec | slice x lobe sens/spec (every voxel; pneumonia)")
    for name in args.cases.split(","):
        series = load_series(sorted(CASES[name].rglob("*.dcm")), require_valid_uids=False)
        v = series.volume
        labels = slice_labels(series, read_labels(LABELS, name), LABELS) if name == "P002" else None
        for variant, gain, sd in VARIANTS:
            hu = v.hu if gain == 0 else sharpen(v.hu, gain, sd)
            vv = Volume(hu, v.spacing_mm, v.direction, v.origin_mm)
            for on in (True, False):
                a = load_settings(None, {"analysis": {"harmonize_kernel": on}}).analysis
                masks = segment_configured(vv, a)
                q = measure(vv, masks, a.ggo_min_hu, a.consolidation_min_hu, a.lobe_involvement_floor_pct)
                noise = lung_noise_hu(hu, masks.lung)
                note = next((n.split(";")[0] for n in masks.notes if n.startswith("high noise")), "-")
                row = [name, variant, "on" if on else "off", f"{q.lung_volume_ml:.0f}",
                       f"{q.lesion_pct:.3f}", f"{q.ggo_volume_ml:.1f}", f"{q.consolidation_volume_ml:.1f}",
                       str(q.ct_score), f"{noise:.1f}" if noise is not None else "-", note]
                if labels is not None:
                    cells = []
                    for mask in (masks.lesion, classify_lesions(hu, masks.lesion, v.spacing_mm).counted):
                        r = evaluate(lesion_areas(mask, masks.lobes, v.spacing_mm, labels), (25.0,))[25.0]
                        s, sl = r["slice"], r["slice_lobe"]
                        cells.append(f"{s.sensitivity:.3f}/{s.specificity:.3f} {sl.sensitivity:.3f}/{sl.specificity:.3f}")
                    row.append("; ".join(cells))
                print(" | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
