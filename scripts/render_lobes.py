"""Render lobe labels over the CT: axial, coronal and sagittal slices side by side (PNG).

    .venv/bin/python scripts/render_lobes.py SERIES_DIR OUT.png [--width 900]

SERIES_DIR: a plain axial DICOM series (identity orientation, e.g. LIDC-IDRI-0001 or
COVID-CT-MD normal002). Lungs by segmentation.lungs, lobes by segmentation.lobes. Colours:
left upper yellow, left lower blue, right upper red, right middle green, right lower purple.
Image left = patient right in the axial and coronal views (radiological display); the
sagittal view is through the right lung, anterior on the left.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_lobes import load_lidc  # noqa: E402
from segmentation.lobes import segment_lobes  # noqa: E402
from segmentation.lungs import segment_lungs  # noqa: E402

COLOURS = np.array([[0, 0, 0], [255, 210, 0], [0, 120, 255], [255, 50, 50], [40, 220, 40], [190, 0, 255]],
                   np.float32)


def _overlay(hu2d: np.ndarray, lab2d: np.ndarray) -> np.ndarray:
    g = np.clip((hu2d + 1200.0) / 1400.0, 0, 1)[..., None] * np.ones(3) * 255.0
    col = COLOURS[lab2d]
    a = np.where(lab2d[..., None] > 0, 0.45, 0.0)
    return (g * (1 - a) + col * a).astype(np.uint8)


def _resize(img: np.ndarray, sy: float, sx: float, px_mm: float) -> Image.Image:
    h, w = img.shape[:2]
    return Image.fromarray(img).resize((max(1, int(w * sx / px_mm)), max(1, int(h * sy / px_mm))),
                                       Image.BILINEAR)


def render(hu: np.ndarray, labels: np.ndarray, spacing, width: int) -> Image.Image:
    sz, sy, sx = spacing
    lung = labels > 0
    zc, yc, _ = (int(np.median(a)) for a in np.nonzero(lung))
    xr = int(np.median(np.nonzero(np.isin(labels, (3, 4, 5)))[2]))
    ax = _overlay(hu[zc], labels[zc])                         # rows = y (anterior up)
    co = _overlay(hu[::-1, yc], labels[::-1, yc])             # rows = z (head up)
    sa = _overlay(hu[::-1, :, xr], labels[::-1, :, xr])       # cols = y (anterior left)
    px = 0.7
    views = [_resize(ax, sy, sx, px), _resize(co, sz, sx, px), _resize(sa, sz, sy, px)]
    h = max(v.height for v in views)
    canvas = Image.new("RGB", (sum(v.width for v in views), h))
    x = 0
    for v in views:
        canvas.paste(v, (x, 0))
        x += v.width
    scale = width / canvas.width
    return canvas.resize((width, int(h * scale)), Image.BILINEAR)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("series", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=900)
    args = ap.parse_args(argv)
    vol = load_lidc(args.series)
    lungs = segment_lungs(vol)
    res = segment_lobes(vol, lungs.left, lungs.right)
    img = render(vol.hu, res.labels, vol.spacing_mm, args.width)
    img.quantize(colors=96).save(args.out, optimize=True)  # small file for the repository
    print(f"{args.out}: confidence {res.confidence}")
    for n in res.notes:
        print(f"  {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
