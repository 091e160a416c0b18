"""Lesion-engine inference time on a 300-slice 512 x 512 chest CT: unet vs threshold.

The volume is the real LIDC-IDRI-0001 series (133 x 512 x 512, 2.5 mm) resampled along z to
300 slices (1.11 mm spacing, linear), so the lungs, body and air are real. Timings:
- lungs: segmentation.lungs.segment_lungs (shared by both engines),
- threshold lesions: segmentation.engine.segment(volume, engine="threshold") minus nothing
  (it is timed whole, lungs included, as the node runs it) and its lesion step alone,
- unet lesions: UNetLesionEngine.predict(volume, lung) (weights loaded beforehand, once).

    .venv/bin/python benchmarks/inference.py [--device auto|cpu|cuda] [--slices 300]
    .venv/bin/python benchmarks/inference.py --stages [--slices 300]   # per-stage times of a
        whole analysis (load, lungs, lobes, lesions, quant, outputs) on CPU and CUDA when
        present: see benchmarks/stages.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_volume(n_slices: int):
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    from segmentation.types import Volume

    root = Path(os.environ.get("LUNGNODE_TEST_DATA", REPO.parent / "shared" / "data"))
    d = root / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series"
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(d)))
    img = r.Execute()
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    sz, sy, sx = img.GetSpacing()[::-1]
    f = n_slices / a.shape[0]
    a = ndi.zoom(a, (f, 1, 1), order=1, grid_mode=True, mode="nearest").astype(np.float32)
    return Volume(a, (sz * 133 / a.shape[0], sy, sx))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped one)")
    ap.add_argument("--stages", action="store_true",
                    help="per-stage times of a whole analysis (benchmarks/stages.py)")
    args = ap.parse_args(argv)
    if args.stages:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from stages import main as stages_main

        return stages_main(["--slices", str(args.slices)])

    import torch

    from segmentation.engine import segment
    from segmentation.lesions_threshold import segment_lesions_threshold
    from segmentation.lungs import segment_lungs
    from segmentation.unet_engine import UNetLesionEngine

    vol = load_volume(args.slices)
    print(f"volume {vol.hu.shape} spacing {tuple(round(s, 3) for s in vol.spacing_mm)} mm; "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    t = time.perf_counter()
    lm = segment_lungs(vol)
    lung = lm.left | lm.right
    t_lungs = time.perf_counter() - t
    print(f"lungs (segment_lungs)                 {t_lungs:6.1f} s")

    t = time.perf_counter()
    thr = segment_lesions_threshold(vol.hu, lung, vol.spacing_mm) & lung
    t_thr = time.perf_counter() - t
    print(f"threshold lesions (lung mask given)   {t_thr:6.1f} s   lesion {100 * thr.sum() / lung.sum():.2f}% of lung")
    t = time.perf_counter()
    segment(vol, engine="threshold")
    print(f"threshold engine segment() end to end {time.perf_counter() - t:6.1f} s")

    t = time.perf_counter()
    eng = UNetLesionEngine(args.weights, device=args.device)
    print(f"unet weights load + sha256            {time.perf_counter() - t:6.1f} s   on {eng.device}")
    for _ in range(args.repeat):
        if eng.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        les = eng.predict(vol, lung)
        if eng.device.type == "cuda":
            torch.cuda.synchronize()
        t_unet = time.perf_counter() - t
        print(f"unet lesions (lung mask given)        {t_unet:6.1f} s   lesion {100 * les.sum() / lung.sum():.2f}% of lung")
    print(f"unet engine incl. lungs               {t_lungs + t_unet:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
