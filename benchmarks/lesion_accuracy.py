"""Lesion-engine accuracy where the truth is known: the phantom and real lungs with painted
dense disease. Prints a table and (--json) writes the figures.

Two settings per case:
- ``truth_lung``: the lesion engine is given the case's truth lung mask (the phantom's own
  label; for a painted real series, the lung of the lesion-free original by
  segmentation.lungs.segment_lungs, which is right on a normal lung). This measures the lesion
  part alone, whatever lung engine the node uses.
- ``end_to_end``: segmentation.engine.segment() with the default lesion engine and the node's
  own lung engine on the painted/phantom volume, as `lungnode analyze` runs it.
GGO / consolidation are split by the node's HU rule (quant.hu_split) inside the lesion mask;
errors are (measured - truth) / truth.

Cases:
- ``phantom_s<seed>``: node.phantom.phantom_with_labels(seed) (120 x 256 x 256, 2.5 mm);
- ``<host>:<pattern>``: a real lesion-free series with disease painted by
  segmentation.lesion_synth (seeded) into its lung on the native grid:
  ``dependent`` = posterior dependent consolidation of 35% of each lung (the issue's case),
  ``lobar`` = 40% of the right lung beyond a fissure-like plane, ``white_lung`` = the left
  lung, ``mixed`` = GGO with patchy consolidation, 15% of each lung.
  Hosts: ``lidc0001_cranial`` (LIDC-IDRI-0001 slices 66..132: never a training host; the
  validation host) and ``normal002`` (COVID-CT-MD normal002: never used in training or for
  any choice; reported only).

    .venv/bin/python benchmarks/lesion_accuracy.py [--weights FILE] [--cases phantom,lidc0001_cranial,normal002]
        [--patterns dependent,lobar,white_lung,mixed] [--no-end-to-end] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("LUNGNODE_TEST_DATA", REPO.parent / "shared" / "data"))
PAINT = {  # pattern -> (fraction of the lung painted, which lungs)
    "dependent": (0.35, ("left", "right")),
    "lobar": (0.40, ("right",)),
    "white_lung": (0.90, ("left",)),
    "mixed": (0.15, ("left", "right")),
}


def _read_series(path: Path):
    import SimpleITK as sitk

    from segmentation.types import Volume

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(path)))
    img = sitk.DICOMOrient(r.Execute(), "LPS")
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    return Volume(a, tuple(float(s) for s in img.GetSpacing()[::-1]))


def host_volume(name: str):
    from segmentation.types import Volume

    if name == "lidc0001_cranial":
        v = _read_series(DATA / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series")
        return Volume(np.ascontiguousarray(v.hu[66:]), v.spacing_mm)
    if name == "normal002":
        return _read_series(DATA / "covid_ct_md_samples/normal002")
    raise ValueError(f"unknown host {name!r}")


def paint(volume, left: np.ndarray, right: np.ndarray, pattern: str, seed: int):
    """The painted Volume and its label map (0 / 1 GGO / 2 consolidation) on the native grid."""
    from segmentation.lesion_synth import synthesize_lesions
    from segmentation.types import Volume

    frac, sides = PAINT[pattern]
    rng = np.random.default_rng(seed)
    hu = volume.hu.astype(np.float32).copy()
    labels = np.zeros(hu.shape, np.uint8)
    vml = float(np.prod(volume.spacing_mm)) / 1000.0
    for side in sides:
        m = left if side == "left" else right
        idx = np.nonzero(m)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        sub_m = m[box]
        out, lab = synthesize_lesions(hu[box], sub_m, volume.spacing_mm, rng,
                                      frac * sub_m.sum() * vml, pattern=pattern,
                                      vessels_not_lesion=True)
        hu[box] = np.where(sub_m, out, hu[box])
        labels[box] = np.where(sub_m, lab, labels[box])
    return Volume(hu, volume.spacing_mm), labels


def measure_case(name, volume, truth_lung, truth_ggo_ml, truth_cons_ml, engine, end_to_end: bool):
    from quant.hu_split import split_lesion

    vml = volume.voxel_volume_ml
    res = {"case": name, "truth": {"lung_ml": float(truth_lung.sum() * vml), "ggo_ml": truth_ggo_ml,
                                   "consolidation_ml": truth_cons_ml}}

    def figures(lung, lesion):
        ggo, cons = split_lesion(volume.hu, lesion & lung, -750.0, -350.0)
        f = {"lung_ml": float(lung.sum() * vml), "lesion_ml": float((lesion & lung).sum() * vml),
             "ggo_ml": float(ggo.sum() * vml), "consolidation_ml": float(cons.sum() * vml)}
        for k, t in (("lung", res["truth"]["lung_ml"]), ("ggo", truth_ggo_ml), ("consolidation", truth_cons_ml)):
            f[f"{k}_err_pct"] = 100.0 * (f[f"{k}_ml"] - t) / t if t > 0 else None
        f["lesion_pct_of_lung"] = 100.0 * f["lesion_ml"] / f["lung_ml"] if f["lung_ml"] else None
        return f

    t = time.time()
    res["truth_lung"] = figures(truth_lung, engine.predict(volume, truth_lung))
    res["truth_lung"]["seconds"] = time.time() - t
    if end_to_end:
        from segmentation.engine import segment

        t = time.time()
        masks = segment(volume, engine="unet", device="cpu") if engine.is_default else None
        if masks is not None:
            res["end_to_end"] = figures(masks.lung, masks.lesion)
            res["end_to_end"]["seconds"] = time.time() - t
    return res


class _Engine:
    def __init__(self, weights: str | None):
        from segmentation.unet_engine import DEFAULT_WEIGHTS, UNetLesionEngine

        self.eng = UNetLesionEngine(weights, "cpu")
        self.is_default = weights is None or Path(weights).resolve() == DEFAULT_WEIGHTS.resolve()

    def predict(self, volume, lung):
        return self.eng.predict(volume, lung)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="lesion weights (default: the shipped ones)")
    ap.add_argument("--cases", default="phantom,lidc0001_cranial,normal002")
    ap.add_argument("--patterns", default=",".join(PAINT))
    ap.add_argument("--seeds", default="0,1", help="phantom seeds")
    ap.add_argument("--no-end-to-end", action="store_true",
                    help="skip segment() (only with the shipped weights anyway)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("LUNGNODE_THREADS", "1")))
    engine = _Engine(args.weights)
    e2e = not args.no_end_to_end
    results = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if case == "phantom":
            from node.phantom import phantom_with_labels

            for seed in [int(s) for s in args.seeds.split(",")]:
                vol, truth, lab = phantom_with_labels(seed=seed)
                vol = type(vol)(vol.hu.astype(np.float32), vol.spacing_mm)
                results.append(measure_case(f"phantom_s{seed}", vol, lab["lung"], truth["ggo_volume_ml"],
                                            truth["consolidation_volume_ml"], engine, e2e))
                _print(results[-1])
            continue
        from segmentation.lungs import segment_lungs

        host = host_volume(case)
        lm = segment_lungs(host)
        lung = lm.left | lm.right
        for i, pattern in enumerate(p.strip() for p in args.patterns.split(",") if p.strip()):
            vol, lab = paint(host, lm.left, lm.right, pattern, seed=100 + i)
            vml = vol.voxel_volume_ml
            results.append(measure_case(f"{case}:{pattern}", vol, lung, float((lab == 1).sum() * vml),
                                        float((lab == 2).sum() * vml), engine, e2e))
            _print(results[-1])
        # the lesion-free original itself
        results.append(measure_case(f"{case}:none", host, lung, 0.0, 0.0, engine, e2e))
        _print(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights or "shipped",
                                               "sha256": engine.eng.sha256, "results": results}, indent=1))
    return 0


def _fmt(v):
    return "   n/a" if v is None else f"{v:+6.1f}%"


def _print(r):
    t = r["truth"]
    for key in ("truth_lung", "end_to_end"):
        if key not in r:
            continue
        f = r[key]
        print(f"{r['case']:28s} {key:10s} lung {f['lung_ml']:7.0f}/{t['lung_ml']:7.0f} ml {_fmt(f['lung_err_pct'])}  "
              f"GGO {f['ggo_ml']:7.1f}/{t['ggo_ml']:7.1f} {_fmt(f['ggo_err_pct'])}  "
              f"cons {f['consolidation_ml']:7.1f}/{t['consolidation_ml']:7.1f} {_fmt(f['consolidation_err_pct'])}  "
              f"lesion {f['lesion_pct_of_lung']:.2f}% of lung  ({f['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
