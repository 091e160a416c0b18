"""Side-by-side timings of the pieces behind the speed-ups of 2026-12-03, each against what it
replaced, in one run (medians of ``--repeat`` runs):

- the two shipped networks on one batch of 16 slices, contiguous vs channels-last weights
  (CPU; what segmentation/net_weights.py picks), and the largest output difference;
- block mean of a 300 x 512 x 512 HU volume by (2, 2, 2): segmentation.blocks.block_mean vs
  the mean over three axes of a 6-D reshape it replaced (and whether they are equal);
- one 512 x 512 RGB overlay image of LIDC-IDRI-0001 (its real headers, a middle slice), per
  image: built by highdicom (what every image cost before) vs copied from the series' first
  image (what build_overlay does after the first), and its JPEG-LS Lossless encoding
  (highdicom.frame.encode_frame, paid either way);
- the colouring of one overlay slice (LIDC-IDRI-0001, a middle slice, lesions and five lobe
  regions drawn by HU so that every code path runs): node.outputs.render.overlay_rgb (look-up
  of the lesion pixels) vs the float blend over the whole slice it replaced (and whether they
  are equal).

    .venv/bin/python benchmarks/kernels.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def median_s(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def networks(repeat: int) -> None:
    import torch

    from segmentation.lung_engine import LungNetEngine
    from segmentation.unet_engine import UNetLesionEngine

    for name, engine, x in (("lung net", LungNetEngine(device="cpu"), torch.randn(16, 1, 144, 144)),
                            ("lesion net", UNetLesionEngine(device="cpu"), torch.randn(16, 3, 128, 168))):
        last = engine.net
        plain = copy.deepcopy(last).to(memory_format=torch.contiguous_format)
        with torch.inference_mode():
            t_plain = median_s(lambda: plain(x), repeat)
            t_last = median_s(lambda: last(x), repeat)
            diff = float((plain(x) - last(x)).abs().max())
        print(f"{name:10s} batch {tuple(x.shape)}: contiguous {t_plain:.3f} s, channels-last "
              f"{t_last:.3f} s ({t_last / t_plain:.2f}x), max |difference| {diff:.1e}")


def block_means(repeat: int) -> None:
    from segmentation.blocks import block_mean

    hu = np.random.default_rng(0).integers(-1024, 1500, (300, 512, 512)).astype(np.float32)
    f = (2, 2, 2)

    def reshaped():
        z, y, x = hu.shape
        return hu.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)

    t_old = median_s(reshaped, repeat)
    t_new = median_s(lambda: block_mean(hu, f), repeat)
    same = np.array_equal(reshaped(), block_mean(hu, f))
    print(f"block mean 300x512x512 by {f}: 6-D reshape mean {t_old:.3f} s, block_mean "
          f"{t_new:.3f} s ({t_old / t_new:.1f}x faster), equal: {same}")


def overlay_image(repeat: int) -> None:
    import highdicom as hd

    from node.outputs import documents, render
    from node.volume import load_series
    from stages import series_files

    series = load_series(series_files(133, Path(".")))        # the real LIDC-IDRI-0001 headers
    k = series.volume.hu.shape[0] // 2
    empty = np.zeros(series.volume.hu.shape[1:], bool)
    rgb = render.overlay_rgb(series.volume.hu[k], empty, empty)
    first = next(iter(documents.build_overlay(series, [rgb], series_number=1, revision=1,
                                              software_version="bench")))
    sp = series.volume.spacing_mm

    def build():
        documents._sc(series, rgb, kind="OVERLAY", instance=k + 1, series_number=1, revision=1,
                      software_version="bench", description="bench",
                      pixel_spacing=(float(sp[1]), float(sp[2])), orientation=("L", "P"))

    n = 20
    t_build = median_s(lambda: [build() for _ in range(n)], repeat) / n
    t_copy = median_s(lambda: [copy.deepcopy(first) for _ in range(n)], repeat) / n

    def encode():
        hd.frame.encode_frame(rgb, transfer_syntax_uid=documents.SC_TRANSFER_SYNTAX,
                              bits_allocated=8, bits_stored=8, photometric_interpretation="RGB",
                              pixel_representation=0, planar_configuration=0)

    t_enc = median_s(encode, repeat)
    print(f"overlay image 512x512 RGB, per image: highdicom build with encoding "
          f"{1000 * t_build:.1f} ms, copy of the first {1000 * t_copy:.2f} ms + encoding "
          f"{1000 * t_enc:.1f} ms; over 300 slices the copy saves "
          f"{300 * (t_build - t_copy - t_enc):.1f} s, the encoding costs {300 * t_enc:.1f} s")


def overlay_colouring(repeat: int) -> None:
    from node.outputs import render
    from node.outputs.codes import LOBES
    from node.volume import load_series
    from stages import series_files

    series = load_series(series_files(133, Path(".")))
    hu = series.volume.hu[series.volume.hu.shape[0] // 2]
    ggo = (hu >= -750) & (hu < -350)
    consolidation = hu >= -350
    lobes = np.where(hu < -400, 1 + (np.arange(hu.shape[1]) * 5 // hu.shape[1])[None, :], 0)
    lobes = lobes.astype(np.uint8)

    def before():
        rgb = render.blend(render.window(hu), ggo, consolidation)
        border = render.lobe_borders(lobes)
        for spec in LOBES.segments:
            rgb[border == spec.number] = spec.rgb
        return rgb

    equal = np.array_equal(before(), render.overlay_rgb(hu, ggo, consolidation, lobes))
    t_old = median_s(before, repeat)
    t_new = median_s(lambda: render.overlay_rgb(hu, ggo, consolidation, lobes), repeat)
    print(f"overlay colouring 512x512 ({int(ggo.sum())} GGO, {int(consolidation.sum())} "
          f"consolidation pixels): float blend {1000 * t_old:.2f} ms, look-up "
          f"{1000 * t_new:.2f} ms ({t_old / t_new:.1f}x), equal: {equal}; over 300 slices "
          f"{300 * (t_old - t_new):.1f} s less")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    networks(args.repeat)
    block_means(args.repeat)
    overlay_image(args.repeat)
    overlay_colouring(args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
