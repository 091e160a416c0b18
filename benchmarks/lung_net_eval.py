"""Lung network (``analysis.lung_engine: net``) against the classical method: figures for the
model card.

    .venv/bin/python benchmarks/lung_net_eval.py painted  [--json FILE]   # held-out painted cases
    .venv/bin/python benchmarks/lung_net_eval.py pictures [--out DIR]     # masks on real COVID-19 CT
    .venv/bin/python benchmarks/lung_net_eval.py phantom  [--seed 0]      # where the phantom's error is

``painted``: LIDC-IDRI-0001 (whole series held out from training) with the classical mask as
truth of the healthy lungs (checked by eye), and disease painted at full resolution by
``segmentation.lung_synth`` (fixed seeds): the issue's case (posterior 40% of both lungs
consolidated, ``paint_dependent_consolidation``) and one case per pattern. Truth after painting:
the healthy lungs minus the painted effusion. Prints, for the net and the classical engine,
Dice per side and the lung volume error. The same for normal002 (a *training* series, so only
as a check of the case the issue measured on "a real lesion-free CT").

``pictures``: the lung contours (red = right, green = left; net | classical side by side) on
COVID-19-NY-SBU axial slices, RICORD-1A stacks and COVID-CT-MD P002 / cap002, written as
small PNGs.

``phantom``: the net's lungs on ``lungnode phantom``'s volume (node.phantom, same seed) against
its truth lung: volume error per side, false-positive and false-negative ml by distance from
the truth boundary, the HU of the false positives, and per-slice areas where the two differ
most (the phantom's lung base is a dome inside homogeneous 40 HU body: no diaphragm, no liver).
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

CASES = [  # (name, patterns, sides, seed)
    ("dependent_consolidation", ("dependent_consolidation",), "both", 1),
    ("lobar_consolidation", ("lobar_consolidation",), "both", 2),
    ("white_lung_right", ("white_lung",), "right", 3),
    ("white_lung_both", ("white_lung",), "both", 4),
    ("atelectasis_effusion", ("effusion", "atelectasis"), "both", 5),
    ("effusion", ("effusion",), "both", 6),
    ("diffuse_ggo", ("diffuse_ggo",), "both", 7),
    ("crazy_paving", ("crazy_paving",), "both", 8),
    ("emphysema", ("emphysema",), "both", 9),
    ("mixed_consolidation_ggo", ("dependent_consolidation", "diffuse_ggo"), "both", 10),
]


def read(path: Path):
    from segmentation.train import read_image
    from segmentation.train_lungs import array_spacing
    from segmentation.types import Volume

    a, spacing = array_spacing(read_image(path))
    return Volume(np.maximum(a.astype(np.float32), -1024.0), spacing)


def dice(a, b) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def score(pred, right, left, vml) -> dict:
    truth = float((right | left).sum()) * vml
    found = float((pred.left | pred.right).sum()) * vml
    return {"dice_right": round(dice(pred.right, right), 4), "dice_left": round(dice(pred.left, left), 4),
            "lung_ml": round(found, 1), "truth_ml": round(truth, 1),
            "volume_error_pct": round(100.0 * (found - truth) / truth, 2)}


def cmd_painted(args) -> int:
    import torch

    from segmentation.lung_engine import LungNetEngine
    from segmentation.lung_synth import paint_dependent_consolidation, paint_disease
    from segmentation.lungs import segment_lungs
    from segmentation.types import Volume

    torch.set_num_threads(args.threads)
    eng = LungNetEngine(args.weights, device=args.device)
    results: dict = {"weights_sha256": eng.sha256, "device": str(eng.device)}
    series = [("lidc0001", DATA / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series", "held out")]
    if args.with_training_series:
        series.append(("normal002", DATA / "covid_ct_md_samples/normal002", "TRAINING series"))
    for sname, path, role in series:
        vol = read(path)
        vml = vol.voxel_volume_ml
        healthy = segment_lungs(vol)
        r0, l0 = healthy.right, healthy.left
        rows = {}
        chosen = [c for c in CASES if args.cases is None or c[0] in args.cases.split(",")]
        cases = [("issue_posterior_40pct", None, None, 0)] + (chosen if sname == "lidc0001" else [])
        for name, patterns, sides, seed in cases:
            t = time.time()
            if patterns is None:
                hu = paint_dependent_consolidation(vol.hu, r0, l0, fraction=0.4)
                rt, lt = r0, l0
            else:
                hu, rt, lt, _eff = paint_disease(vol.hu, r0, l0, vol.spacing_mm, np.random.default_rng(seed),
                                                 patterns=patterns, sides=sides)
            sick = Volume(hu, vol.spacing_mm)
            dense = float(((hu > -350) & (rt | lt)).sum()) / max(1, int((rt | lt).sum()))
            t1 = time.time()
            net = eng.predict(sick)
            t_net = time.time() - t1
            row = {"dense_fraction_of_lung": round(dense, 3), "net": score(net, rt, lt, vml),
                   "net_seconds": round(t_net, 1)}
            if not args.no_classical or patterns is None:
                row["classical"] = score(segment_lungs(sick), rt, lt, vml)
            rows[name] = row
            if args.json:
                Path(args.json).write_text(json.dumps({**results, sname: {"role": role, "cases": rows}}, indent=1))
            c = row.get("classical", {})
            print(f"{sname} ({role}) {name:26s} dense {100 * dense:5.1f}% | net Dice R {row['net']['dice_right']:.3f} "
                  f"L {row['net']['dice_left']:.3f} vol {row['net']['volume_error_pct']:+6.2f}% | classical "
                  f"Dice R {c.get('dice_right', float('nan')):.3f} L {c.get('dice_left', float('nan')):.3f} "
                  f"vol {c.get('volume_error_pct', float('nan')):+6.2f}% | truth {row['net']['truth_ml']:.0f} ml "
                  f"({time.time() - t:.0f}s)", flush=True)
        results[sname] = {"role": role, "cases": rows}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


# ---------------------------------------------------------------------------------------
# pictures


def _tile(hu2d, right, left, size=None):
    from PIL import Image
    from scipy import ndimage as ndi

    g = np.clip((hu2d + 1150.0) / 1400.0 * 255.0, 0, 255).astype(np.uint8)
    rgb = np.stack([g] * 3, -1)
    for m, col in ((right, (255, 40, 40)), (left, (40, 230, 40))):
        edge = m & ~ndi.binary_erosion(m, iterations=2)
        rgb[edge] = col
    im = Image.fromarray(rgb)
    if size:
        im = im.resize(size, Image.BILINEAR)
    return np.asarray(im)


def _save(rows, path: Path, title_h=0):
    from PIL import Image

    w = max(sum(t.shape[1] for t in r) for r in rows)
    h = sum(max(t.shape[0] for t in r) for r in rows)
    canvas = np.zeros((h, w, 3), np.uint8)
    y = 0
    for r in rows:
        x = 0
        for t in r:
            canvas[y:y + t.shape[0], x:x + t.shape[1]] = t
            x += t.shape[1]
        y += max(t.shape[0] for t in r)
    im = Image.fromarray(canvas).quantize(colors=96)
    im.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)", flush=True)


def _pair(vol, net, cla, z, size=(220, 220)):
    return np.concatenate([_tile(vol.hu[z], net.right[z], net.left[z], size),
                           _tile(vol.hu[z], cla.right[z], cla.left[z], size)], 1)


def cmd_pictures(args) -> int:
    import torch

    from segmentation.lung_engine import LungNetEngine
    from segmentation.lungs import segment_lungs

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eng = LungNetEngine(device=args.device)
    # COVID-19-NY-SBU single axial slices
    files = sorted((DATA / "covid19_ny_sbu_single_slices").glob("*/axial/*.dcm"))
    tiles = []
    for f in files:
        vol = read(f)
        tiles.append(_pair(vol, eng.predict(vol), segment_lungs(vol), 0, (190, 190)))
    rows = [tiles[i:i + 3] for i in range(0, len(tiles), 3)]
    _save(rows[:4], out / "lungnet_ny_sbu_1.png")
    _save(rows[4:], out / "lungnet_ny_sbu_2.png")
    # RICORD-1A stacks: slices 2 and 7 of each
    rows = []
    for p in sorted((DATA / "ricord_1a_partial").glob("patient_*")):
        vol = read(p)
        net, cla = eng.predict(vol), segment_lungs(vol)
        rows.append([_pair(vol, net, cla, z, (190, 190)) for z in (2, 7)])
    _save(rows, out / "lungnet_ricord.png")
    # COVID-CT-MD P002 and cap002: four levels + coronal
    import csv

    labels = list(csv.DictReader(open(DATA / "covid_ct_md_samples/labels.csv")))
    for case in ("P002", "cap002"):
        vol = read(DATA / "covid_ct_md_samples" / case)
        net, cla = eng.predict(vol), segment_lungs(vol)
        lung_z = np.nonzero((net.left | net.right).any((1, 2)))[0]
        nz = vol.hu.shape[0]
        infected = [int(r["slice_rank_superior_first"]) for r in labels
                    if r.get("subject", r.get("case", "")) == case and r["infected"] == "1"]
        zs = sorted({nz - 1 - k for k in infected})
        pick = [zs[int(i)] for i in np.linspace(0, len(zs) - 1, 4)] if len(zs) >= 4 else \
            [int(lung_z[int(i)]) for i in np.linspace(len(lung_z) * 0.2, len(lung_z) * 0.85, 4)]
        rows = [[_pair(vol, net, cla, z, (200, 200)) for z in pick[:2]],
                [_pair(vol, net, cla, z, (200, 200)) for z in pick[2:]]]
        yl = np.nonzero((net.left | net.right).any((0, 2)))[0]
        y = int(np.percentile(yl, 65))
        h = int(round(nz * vol.spacing_mm[0] / vol.spacing_mm[2] * 400 / vol.hu.shape[2]))
        cor_n = _tile(vol.hu[::-1, y], net.right[::-1, y], net.left[::-1, y], (400, h))
        cor_c = _tile(vol.hu[::-1, y], cla.right[::-1, y], cla.left[::-1, y], (400, h))
        rows.append([cor_n, cor_c])
        _save(rows, out / f"lungnet_covid_ct_md_{case}.png")
        print(f"{case}: slices shown (index, inferior first) {pick}; coronal row {y}", flush=True)
    return 0


def cmd_phantom(args) -> int:
    from scipy import ndimage as ndi

    from node.phantom import phantom_with_labels
    from segmentation.lung_engine import LungNetEngine

    vol, _truth, lab = phantom_with_labels(seed=args.seed)
    masks = LungNetEngine(args.weights, args.device).predict(vol)
    vml = float(np.prod(vol.spacing_mm)) / 1000.0
    truth = lab["lung"]
    pred = masks.left | masks.right
    print(f"phantom seed {args.seed}, {vol.hu.shape}, spacing {vol.spacing_mm} mm")
    for side, t, p in (("both", truth, pred), ("left", truth & lab["left"], masks.left),
                       ("right", truth & lab["right"], masks.right)):
        print(f"  {side:5s} truth {t.sum() * vml:7.1f} ml  net {p.sum() * vml:7.1f} ml  "
              f"error {100 * (p.sum() / max(1, t.sum()) - 1):+6.1f} %")
    fp, fn = pred & ~truth, truth & ~pred
    d_out = ndi.distance_transform_edt(~truth, sampling=vol.spacing_mm)
    d_in = ndi.distance_transform_edt(truth, sampling=vol.spacing_mm)
    for lo, hi in ((0, 2), (2, 4), (4, 8), (8, np.inf)):
        print(f"  {lo}-{hi} mm from the truth boundary: false positive "
              f"{(fp & (d_out > lo) & (d_out <= hi)).sum() * vml:6.1f} ml, false negative "
              f"{(fn & (d_in > lo) & (d_in <= hi)).sum() * vml:6.1f} ml")
    if fp.any():
        print("  false-positive HU 5/50/95th percentile:",
              " / ".join(f"{v:.0f}" for v in np.percentile(vol.hu[fp], [5, 50, 95])))
    diff = (fp.sum(axis=(1, 2)) + fn.sum(axis=(1, 2))) * vml
    for k in np.argsort(diff)[::-1][:6]:
        print(f"  slice {k:3d}: truth {truth[k].sum() * vml:6.1f} ml, net {pred[k].sum() * vml:6.1f} ml")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("painted")
    p.add_argument("--json")
    p.add_argument("--weights", default=None, help="lung_net.pt to measure (default: the shipped one)")
    p.add_argument("--no-classical", action="store_true")
    p.add_argument("--cases", default=None, help="comma-separated subset of the painted cases")
    p.add_argument("--with-training-series", action="store_true")
    q = sub.add_parser("pictures")
    q.add_argument("--out", default=str(REPO / "segmentation" / "model_card"))
    r = sub.add_parser("phantom")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--weights", default=None, help="lung_net.pt to measure (default: the shipped one)")
    for s in (p, q, r):
        s.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
        s.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    return {"painted": cmd_painted, "pictures": cmd_pictures, "phantom": cmd_phantom}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
