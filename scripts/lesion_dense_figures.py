"""Dense-disease pictures for segmentation/MODEL_CARD.md (small PNGs in segmentation/model_card/).

- ``generator_dense_patterns.png``: one training slab per dense pattern of the lesion generator
  (top: the slab, bottom: its labels, GGO green / consolidation red) and one slab with
  normal-lung mimics (labelled background);
- ``phantom_dense.png``: the phantom slice through its pleural consolidation: truth | shipped
  lesion engine given the truth lung;
- ``painted_<host>_dependent.png``: a real lesion-free series with painted dependent
  consolidation: truth | prediction (truth lung given);
- ``real_<case>.png``: real COVID-19 / pneumonia slices (COVID-CT-MD P002, cap002; RICORD)
  with the node's default segmentation (lung outline blue, lesion red/green by HU split).

    .venv/bin/python scripts/lesion_dense_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "segmentation" / "model_card"


def _gray(hu):
    return (np.clip((np.asarray(hu, np.float32) + 1100) / 1250, 0, 1) * 255).astype(np.uint8)


def _overlay(hu, cls, lung=None):
    g = _gray(hu)
    rgb = np.stack([g, g, g], -1).astype(np.float32)
    for c, col in ((1, (0, 255, 0)), (2, (255, 40, 40))):
        m = cls == c
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.array(col, np.float32)
    if lung is not None:
        edge = lung & ~(np.roll(lung, 1, 0) & np.roll(lung, -1, 0) & np.roll(lung, 1, 1) & np.roll(lung, -1, 1))
        rgb[edge] = (60, 120, 255)
    return rgb.astype(np.uint8)


def _save(panels, path, width=900):
    h = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    img = Image.fromarray(np.concatenate(panels, 1))
    img = img.resize((width, max(1, int(img.height * width / img.width))), Image.BILINEAR)
    img.save(path, optimize=True)
    print("wrote", path)


def _hu_classes(hu, lesion):
    from quant.hu_split import split_lesion

    g, c = split_lesion(hu, lesion, -750.0, -350.0)
    return np.where(c, 2, np.where(g, 1, 0))


def generator_gallery():
    from segmentation import train as T
    from segmentation.lesion_synth import ALL_PATTERNS

    hosts = [h for h in T.load_hosts(T.DATA_ROOT, ("totalseg_example_ct",)) if h.hu.shape[0] > 20]
    rng = np.random.default_rng(3)
    cols = []
    for i, p in enumerate(("dependent", "lobar", "white_lung", "mixed", "dense_consolidation")):
        w = tuple(1.0 if q == p else 0.0 for q in ALL_PATTERNS)
        x, y = T.slab_sample(hosts[i % len(hosts)], rng, True, ALL_PATTERNS, w, 0.0, True)
        cols.append(np.concatenate([_overlay(x[1], np.zeros_like(y)), _overlay(x[1], y)], 0))
    x, y = T.slab_sample(hosts[0], rng, False, ALL_PATTERNS, None, 1.0, True)
    cols.append(np.concatenate([_overlay(x[1], y), _overlay(x[1], y)], 0))
    _save(cols, OUT / "generator_dense_patterns.png", width=1100)


def phantom_figure(engine):
    from node.phantom import phantom_with_labels

    vol, _, lab = phantom_with_labels(seed=0)
    k = int(np.argmax(lab["pleural_consolidation"].sum((1, 2))))
    hu = vol.hu.astype(np.float32)
    truth = np.where(lab["consolidation"], 2, np.where(lab["ggo"], 1, 0))
    from segmentation.types import Volume

    pred = engine.predict(Volume(hu, vol.spacing_mm), lab["lung"])
    _save([_overlay(hu[k], truth[k], lab["lung"][k]), _overlay(hu[k], _hu_classes(hu, pred)[k], lab["lung"][k])],
          OUT / "phantom_dense.png", width=700)


def painted_figure(engine, host="normal002"):
    from lesion_accuracy import host_volume, paint

    from segmentation.lungs import segment_lungs

    v = host_volume(host)
    lm = segment_lungs(v)
    lung = lm.left | lm.right
    pv, lab = paint(v, lm.left, lm.right, "dependent", seed=100)
    pred = engine.predict(pv, lung)
    k = int(np.argmax((lab == 2).sum((1, 2))))
    _save([_overlay(pv.hu[k], lab[k], lung[k]), _overlay(pv.hu[k], _hu_classes(pv.hu[k:k + 1], pred[k:k + 1])[0], lung[k])],
          OUT / f"painted_{host}_dependent.png", width=800)


def real_figures():
    from lesion_accuracy import _read_series

    from segmentation.engine import segment

    for name, path in (("P002", DATA / "covid_ct_md_samples/P002"), ("cap002", DATA / "covid_ct_md_samples/cap002"),
                       ("ricord_patient_1", DATA / "ricord_1a_partial/patient_1")):
        if not path.exists():
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))
        series_dir = files[0].parent if files else path
        v = _read_series(series_dir)
        m = segment(v, engine="unet", device="cpu")
        cls = _hu_classes(v.hu, m.lesion & m.lung)
        order = np.argsort((m.lesion & m.lung).sum((1, 2)))[::-1]
        ks = sorted(int(k) for k in order[:2])
        panels = []
        for k in ks:
            panels.append(_overlay(v.hu[k], np.zeros_like(cls[k]), None))
            panels.append(_overlay(v.hu[k], cls[k], m.lung[k]))
        _save(panels, OUT / f"real_{name}.png", width=1100)


def main(argv=None) -> int:
    import torch

    from segmentation.unet_engine import UNetLesionEngine

    torch.set_num_threads(1)
    engine = UNetLesionEngine(device="cpu")
    generator_gallery()
    phantom_figure(engine)
    painted_figure(engine)
    real_figures()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
