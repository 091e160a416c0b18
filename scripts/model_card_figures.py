"""Failure-case pictures for segmentation/MODEL_CARD.md (small PNGs in segmentation/model_card/).

For the MedSeg validation slices with the lowest lesion Dice under the shipped weights:
calibrated slice (lung window) | reference (GGO green, consolidation red) | prediction.
Also one LIDC-IDRI-0001 (lesion-free) slice with the most predicted lesion pixels.

    .venv/bin/python scripts/model_card_figures.py [--n 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "segmentation" / "model_card"


def _gray(hu):
    return (np.clip((hu + 1100) / 1250, 0, 1) * 255).astype(np.uint8)


def _overlay(hu, cls):
    g = _gray(hu)
    rgb = np.stack([g, g, g], -1).astype(np.float32)
    for c, col in ((1, (0, 255, 0)), (2, (255, 40, 40))):
        m = cls == c
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.array(col, np.float32)
    return rgb.astype(np.uint8)


def _save(panels, path, width=600):
    img = Image.fromarray(np.concatenate(panels, 1))
    h = int(img.height * width / img.width)
    img.resize((width, h), Image.BILINEAR).save(path, optimize=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3)
    args = ap.parse_args(argv)
    from segmentation.evaluate_medseg import classes_from_probs, predict_slice_unet
    from segmentation.medseg import load_medseg
    from segmentation.unet_engine import get_engine

    eng = get_engine(None, "cpu")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for sl in load_medseg(DATA / "medseg_covid19_100slices_infnet", "val"):
        cls = classes_from_probs(predict_slice_unet(eng, sl))
        ref = sl.labels > 0
        d = 2 * (ref & (cls > 0)).sum() / max(1, ref.sum() + (cls > 0).sum())
        rows.append((d, sl, cls))
    rows.sort(key=lambda r: r[0])
    for d, sl, cls in rows[: args.n]:
        f = OUT / f"medseg_val_{sl.slice_id}.png"
        _save([_overlay(sl.hu, np.zeros_like(cls)), _overlay(sl.hu, sl.labels), _overlay(sl.hu, cls)], f)
        print(f"{f.relative_to(REPO)}: lesion Dice {d:.3f}")

    import SimpleITK as sitk

    from segmentation.lungs import segment_lungs
    from segmentation.types import Volume

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(DATA / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series")))
    img = r.Execute()
    vol = Volume(sitk.GetArrayFromImage(img).astype(np.float32), tuple(img.GetSpacing()[::-1]))
    lm = segment_lungs(vol)
    lung = lm.left | lm.right
    les = eng.predict(vol, lung)
    z = int(np.argmax(les.sum((1, 2))))
    f = OUT / "lidc0001_false_positive.png"
    _save([_overlay(vol.hu[z], np.zeros(les[z].shape, np.uint8)), _overlay(vol.hu[z], les[z].astype(np.uint8))], f, 500)
    print(f"{f.relative_to(REPO)}: slice {z}, {int(les[z].sum())} lesion px ({int(les.sum())} in the series)")


if __name__ == "__main__":
    main()
