"""Per-stage times of one whole analysis: load, lungs, lobes, lesions, quant, outputs.

Runs on the real LIDC-IDRI-0001 DICOM series (133 x 512 x 512); with ``--slices N`` (N != 133)
a copy resampled along z to N slices is written as DICOM first (not timed), so "load" decodes
N real files. Each stage calls the node's own functions in the order the analysis does:

- load: node.volume.load_series (decode, geometry checks, canonical LPS reorientation);
- lungs: the default learned lungs (segmentation.lung_engine, weights loaded before) and the
  classical fallback (segmentation.lungs.segment_lungs) for comparison;
- lobes: segmentation.lobes.segment_lobes on the learned lungs;
- lesions: the engine's lesion step (unet: UNetLesionEngine.predict, weights loaded before);
- hilar filter: segmentation.hilum.drop_hilar_components on the lobes' hilar zone;
- segment(): segmentation.engine.segment end to end (what the node runs; includes the above),
  and once more with ``hilar_filter=False`` in the same run, so the filter's cost is a ratio;
- quant: quant.hu_split.split_lesion + quant.measure.measure;
- outputs: node.outputs build_segs (lesions, lungs, lobes) + build_sr, encoded to bytes.

On CPU always; on CUDA too when torch sees a GPU (else it says so).

    .venv/bin/python benchmarks/stages.py [--slices 300] [--engine unet|threshold]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LIDC = "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series"


def lidc_files() -> list[Path]:
    root = Path(os.environ.get("LUNGNODE_TEST_DATA", REPO.parent / "shared" / "data"))
    return sorted((root / LIDC).glob("*.dcm"))


def lidc_headers() -> list:
    """LIDC-IDRI-0001's datasets (pixels included), sorted by position along z."""
    import pydicom

    return sorted((pydicom.dcmread(p) for p in lidc_files()),
                  key=lambda d: float(d.ImagePositionPatient[2]))


def write_series(headers: list, stored: np.ndarray, z_mm, folder: Path,
                 thickness_mm: float | None = None, pixel_mm: float | None = None) -> list[Path]:
    """``stored`` (slices, rows, columns; stored values) as a new DICOM series in ``folder``,
    each file a copy of headers[0] with its own UIDs, z position ``z_mm[k]`` and instance
    number; SliceThickness and, with ``pixel_mm``, PixelSpacing / Rows / Columns replaced."""
    import copy

    from pydicom.uid import generate_uid

    dtype = headers[0].pixel_array.dtype
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(stored.shape[0]):
        ds = copy.deepcopy(headers[0])   # a Dataset's copy() shares its elements
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        z = round(float(z_mm[k]), 4)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
        ds.SliceLocation = z
        ds.InstanceNumber = k + 1
        if thickness_mm is not None:
            ds.SliceThickness = thickness_mm
        if pixel_mm is not None:
            ds.Rows, ds.Columns = stored.shape[1:]
            ds.PixelSpacing = [round(pixel_mm, 6), round(pixel_mm, 6)]
        ds.PixelData = np.rint(stored[k]).astype(dtype).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def series_files(n_slices: int, tmp: Path) -> list[Path]:
    from scipy import ndimage as ndi

    files = lidc_files()
    if n_slices == len(files):
        return files
    headers = lidc_headers()
    stored = np.stack([d.pixel_array for d in headers]).astype(np.float32)
    z0 = float(headers[0].ImagePositionPatient[2])
    dz = (float(headers[-1].ImagePositionPatient[2]) - z0) / (len(headers) - 1)
    new = ndi.zoom(stored, (n_slices / len(headers), 1, 1), order=1, grid_mode=True, mode="nearest")
    step = dz * len(headers) / n_slices
    return write_series(headers, new, [z0 + k * step for k in range(n_slices)], tmp)


def run(files: list[Path], engine: str, device: str) -> dict[str, float]:
    import torch

    from node import __version__
    from node.outputs.seg import build_segs
    from node.outputs.sr import build_sr
    from node.volume import load_series
    from quant.hu_split import split_lesion
    from quant.measure import measure
    from segmentation.engine import segment
    from segmentation.hilum import drop_hilar_components
    from segmentation.lesions_threshold import segment_lesions_threshold
    from segmentation.lobes import segment_lobes
    from segmentation.lung_engine import get_lung_engine
    from segmentation.lungs import segment_lungs

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times: dict[str, float] = {}
    t = time.perf_counter()
    series = load_series(files)
    vol = series.volume
    times["load"] = time.perf_counter() - t
    lung_net = get_lung_engine(None, device)
    sync()
    t = time.perf_counter()
    lungs = lung_net.predict(vol)
    sync()
    lung = lungs.left | lungs.right
    times["lungs (net)"] = time.perf_counter() - t
    t = time.perf_counter()
    segment_lungs(vol)
    times["lungs (classical)"] = time.perf_counter() - t
    t = time.perf_counter()
    lobes = segment_lobes(vol, lungs.left, lungs.right)
    times["lobes"] = time.perf_counter() - t
    if engine == "unet":
        from segmentation.unet_engine import get_engine

        eng = get_engine(None, device)
        sync()
        t = time.perf_counter()
        lesion = eng.predict(vol, lung)
        sync()
    else:
        t = time.perf_counter()
        lesion = segment_lesions_threshold(vol.hu, lung, vol.spacing_mm)
    times["lesions"] = time.perf_counter() - t
    t = time.perf_counter()
    if lobes.hilum is not None:
        drop_hilar_components(vol.hu, lesion & lung, lobes.hilum, vol.spacing_mm)
    times["hilar filter"] = time.perf_counter() - t
    t = time.perf_counter()
    segment(vol, engine=engine, device=device, hilar_filter=False)
    sync()
    times["segment() no hilar"] = time.perf_counter() - t
    t = time.perf_counter()
    masks = segment(vol, engine=engine, device=device)
    sync()
    times["segment() end to end"] = time.perf_counter() - t
    t = time.perf_counter()
    ggo, cons = split_lesion(vol.hu, masks.lesion, -750.0, -350.0)
    m = measure(vol, masks, split=(ggo, cons))
    times["quant"] = time.perf_counter() - t
    t = time.perf_counter()
    segs = build_segs(series, masks, ggo, cons,
                      series_numbers={"lesions": 901, "lungs": 903, "lobes": 904}, revision=1,
                      software_version=__version__)
    sr = build_sr(series, segs, m, series_number=902, revision=1, software_version=__version__)
    for ds in (*segs.values(), sr):
        ds.save_as(io.BytesIO(), enforce_file_format=True)
    times["outputs"] = time.perf_counter() - t
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--engine", default="unet", choices=("unet", "threshold"))
    args = ap.parse_args(argv)
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="lungnode-bench-") as tmp:
        files = series_files(args.slices, Path(tmp))
        print(f"series: {len(files)} slices of 512 x 512 (LIDC-IDRI-0001"
              f"{'' if args.slices == 133 else ', resampled along z'}); engine {args.engine}; "
              f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        if "cuda" not in devices:
            print("CUDA: not available here (torch.cuda.is_available() is False): CPU figures only")
        for device in devices:
            times = run(files, args.engine, device)
            print(f"-- {device}")
            for stage, seconds in times.items():
                print(f"  {stage:22s} {seconds:7.2f} s")
            whole = times["load"] + times["segment() end to end"] + times["quant"] + times["outputs"]
            print(f"  {'whole analysis':22s} {whole:7.2f} s  (load + segment() + quant + outputs)")
            ratio = times["segment() end to end"] / times["segment() no hilar"]
            print(f"  {'segment() ratio':22s} {ratio:7.2f}    (default / without the hilar filter, same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
