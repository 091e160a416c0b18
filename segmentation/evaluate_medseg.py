"""``lungnode evaluate medseg <dir> [--json FILE] [--split all|val] [--engine unet|threshold]``.

Dice of the lesion model against the MedSeg radiologists' labels (folder laid out like
shared/data/medseg_covid19_100slices_infnet). Slices are calibrated to HU exactly as in
training (segmentation.medseg), transposed back to display orientation, resized to the model
grid (left-right extent = MEDSEG_FIELD_MM), and fed as a 2.5D stack that repeats the slice
three times (the slices have no neighbours). The unet runs on the whole slice with no lung
mask (a 2-D lung mask from these crops misses much of the dense disease); probabilities are
resized back to the source grid.

GGO / consolidation:
- ``ggo_dice`` / ``consolidation_dice``: the network's 3-class head (argmax of GGO vs
  consolidation inside the predicted lesion) — the shipped split for this evaluation;
- ``hu_split``: the same lesion mask split by the node's HU rule on the calibrated slice
  (GGO -750 <= HU < -350, consolidation HU >= -350), reported beside it.
The ``threshold`` engine is run on the calibrated slice as a 1-slice volume inside a rough
2-D lung mask (medseg.lung_mask_2d), split by HU (it has no class head).
With ``--margin`` the one-voxel lesion margin (segmentation.lesion_margin, the node's
``analysis.lesion_margin``) is added to the unet mask, inside the 2-D lung mask joined with the
lesion (no size gate: a 2-D slice has no volume).
Dice is pooled over all slices (sum of intersections / sum of sizes); per-slice values too.
"""

from __future__ import annotations

import argparse
import sys
import json
import logging
from pathlib import Path

import numpy as np

from segmentation.lesion_margin import grow_margin
from segmentation.medseg import MEDSEG_FIELD_MM, MedSegSlice, load_medseg, lung_mask_2d, model_grid_shape

log = logging.getLogger(__name__)
GGO_HU = (-750.0, -350.0)


def _resize(a: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)
    while t.ndim < 4:
        t = t[None]
    if mode == "nearest":
        r = F.interpolate(t, size=shape, mode="nearest")
    else:
        r = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)
    return r.reshape(*a.shape[:-2], *shape).numpy() if a.ndim > 2 else r[0, 0].numpy()


def predict_slice_unet(engine, sl: MedSegSlice) -> np.ndarray:
    """Class probabilities (3, H, W) on the slice's own grid."""
    shape = model_grid_shape(sl.hu.shape, engine.pixel_mm)
    hu = _resize(sl.hu, shape, "bilinear")
    p = engine.predict_stack(np.repeat(hu[None, None], 3, axis=1))[0].numpy()
    return _resize(p, sl.hu.shape, "bilinear")


def classes_from_probs(p: np.ndarray) -> np.ndarray:
    lesion = p[0] < 0.5
    cls = np.where(p[2] > p[1], 2, 1).astype(np.uint8)
    return np.where(lesion, cls, 0).astype(np.uint8)


def classes_by_hu(lesion: np.ndarray, hu: np.ndarray) -> np.ndarray:
    out = np.zeros(hu.shape, np.uint8)
    out[lesion & (hu >= GGO_HU[0]) & (hu < GGO_HU[1])] = 1
    out[lesion & (hu >= GGO_HU[1])] = 2
    return out


def predict_slice_threshold(sl: MedSegSlice) -> np.ndarray:
    from segmentation.lesions_threshold import segment_lesions_threshold

    px = MEDSEG_FIELD_MM / sl.hu.shape[1]
    lung = lung_mask_2d(sl.hu)
    les = segment_lesions_threshold(sl.hu[None], lung[None], (2.5, px, px))[0] & lung
    return les


def _dice(inter: float, a: float, b: float) -> float | None:
    return None if a + b == 0 else 2.0 * inter / (a + b)


class _Pool:
    def __init__(self):
        self.s = {}

    def add(self, name, pred, ref):
        i, a, b = self.s.get(name, (0, 0, 0))
        self.s[name] = (i + int((pred & ref).sum()), a + int(pred.sum()), b + int(ref.sum()))
        return _dice(int((pred & ref).sum()), int(pred.sum()), int(ref.sum()))

    def dice(self, name):
        return _dice(*self.s.get(name, (0, 0, 0)))


def evaluate(root: str | Path, split: str = "all", engine_name: str = "unet",
             weights: str | None = None, device: str = "auto", slices=None,
             margin: bool = False) -> dict:
    slices = slices if slices is not None else load_medseg(root, split)
    engine = None
    if engine_name == "unet":
        from segmentation.unet_engine import get_engine

        engine = get_engine(weights, device)
    elif engine_name != "threshold":
        raise ValueError(f"unknown engine {engine_name!r}")
    pool = _Pool()
    per_slice = []
    for sl in slices:
        if engine is not None:
            probs = predict_slice_unet(engine, sl)
            cls = classes_from_probs(probs)
            lesion = cls > 0
            if margin:
                # as the node does (segmentation.lesion_margin); the lung is the 2-D lung mask
                # joined with the lesion (that mask misses dense disease)
                grown = grow_margin(sl.hu, lesion, lung_mask_2d(sl.hu) | lesion)
                cls = np.where(grown & ~lesion, np.where(probs[2] > probs[1], 2, 1), cls).astype(np.uint8)
                lesion = grown
        else:
            lesion = predict_slice_threshold(sl)
            cls = classes_by_hu(lesion, sl.hu)
        hu_cls = classes_by_hu(lesion, sl.hu)
        ref = sl.labels
        row = {"slice_id": sl.slice_id, "split": sl.split,
               "lesion_dice": pool.add("lesion", lesion, ref > 0),
               "ggo_dice": pool.add("ggo", cls == 1, ref == 1),
               "consolidation_dice": pool.add("cons", cls == 2, ref == 2),
               "hu_split_ggo_dice": pool.add("hu_ggo", hu_cls == 1, ref == 1),
               "hu_split_consolidation_dice": pool.add("hu_cons", hu_cls == 2, ref == 2),
               "lesion_px_pred": int(lesion.sum()), "lesion_px_ref": int((ref > 0).sum())}
        per_slice.append(row)
    return {
        "engine": engine_name,
        "weights_sha256": getattr(engine, "sha256", None),
        "split": split,
        "margin": bool(margin and engine is not None),
        "n_slices": len(slices),
        "lesion_dice": pool.dice("lesion"),
        "ggo_dice": pool.dice("ggo"),
        "consolidation_dice": pool.dice("cons"),
        "class_split": "network 3-class head" if engine is not None else "HU thresholds",
        "hu_split": {"ggo_dice": pool.dice("hu_ggo"), "consolidation_dice": pool.dice("hu_cons")},
        "per_slice": per_slice,
    }


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lungnode evaluate medseg", description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="folder with images/*.jpg and lesion_class_mask/*.png")
    ap.add_argument("--json", dest="json_file", help="write the Dice figures to this JSON file")
    ap.add_argument("--split", choices=("all", "val", "train"), default="all",
                    help="val = Inf-Net's test split (needs slices.csv); default all")
    ap.add_argument("--engine", choices=("unet", "threshold"), default="unet")
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--margin", action="store_true",
                    help="add the one-voxel lesion margin (as analysis.lesion_margin: true does)")
    args = ap.parse_args(argv)
    try:
        res = evaluate(args.dir, args.split, args.engine, args.weights, args.device,
                       margin=args.margin)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lungnode evaluate medseg: {exc}", file=sys.stderr)
        return 2
    print(f"engine {res['engine']}, split {res['split']}, {res['n_slices']} slices")
    print(f"lesion Dice        {_fmt(res['lesion_dice'])}")
    print(f"GGO Dice           {_fmt(res['ggo_dice'])}   ({res['class_split']})")
    print(f"consolidation Dice {_fmt(res['consolidation_dice'])}")
    print(f"HU split: GGO {_fmt(res['hu_split']['ggo_dice'])}, "
          f"consolidation {_fmt(res['hu_split']['consolidation_dice'])}")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
