"""Receive throughput: lungnode's SCP against dcmtk storescp, same series, same sender.

Generates (or takes with --series DIR) a 300-slice 512x512 CT series, then for several rounds,
alternating, sends it with dcmtk ``storescu`` (one association, explicit VR little endian,
``+sd`` directory scan, TCP_NODELAY=1) to

* a lungnode ``Node`` (in-process, temp storage root, full durable path: fsync + rename +
  directory fsync + committed row + series tracker), and
* dcmtk ``storescp`` writing to a temp directory (no fsync),

and prints the median rates (images/s) and the ratio node/storescp.

    .venv/bin/python benchmarks/receive.py [--rounds 5] [--slices 300] [--series DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.config import Settings  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_series(out_dir: Path, slices: int, size: int = 512) -> list[Path]:
    """Synthetic chest-like CT: air outside, soft tissue body, two low-HU lungs, noise."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    body = ((xx - c) / (0.42 * size)) ** 2 + ((yy - c) / (0.32 * size)) ** 2 <= 1
    lungs = (((xx - 0.35 * size) / (0.11 * size)) ** 2 + ((yy - c) / (0.2 * size)) ** 2 <= 1) | (
        ((xx - 0.65 * size) / (0.11 * size)) ** 2 + ((yy - c) / (0.2 * size)) ** 2 <= 1
    )
    base = np.full((size, size), -1000, np.int16)
    base[body] = 40
    base[lungs] = -850
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(slices):
        pixels = (base + rng.normal(0, 20, base.shape)).astype(np.int16) + 1024
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "BENCH^SYNTHETIC", "BENCH0001"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = i + 1
        ds.SliceThickness = 1.0
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImagePositionPatient = [-179.2, -179.2, -i * 1.0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        path = out_dir / f"CT{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


def send(series_dir: Path, port: int, n: int) -> float:
    """Send the whole directory in one association; returns images/s (association included)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", "LUNGNODE", "-xe", "+sd", "127.0.0.1", str(port),
         str(series_dir)], env=ENV, capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or "Store Failed" in proc.stderr or "E:" in proc.stderr:
        raise RuntimeError(f"storescu failed: {proc.stderr[-2000:]}")
    return n / elapsed


def round_storescp(series_dir: Path, n: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-storescp-"))
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "-aet", "LUNGNODE", "-od", str(out), str(port)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        rate = send(series_dir, port, n)
        assert len(list(out.iterdir())) == n, "storescp did not store every file"
        return rate
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(out, ignore_errors=True)


def round_node(series_dir: Path, n: int) -> float:
    from node.app import Node

    root = Path(tempfile.mkdtemp(prefix="bench-node-"))
    settings = Settings.model_validate({
        "network": {"port": 0, "max_pdu_bytes": 131072},
        "storage": {"root": str(root), "min_free_mb": 64},
        "series": {"quiet_period_s": 3600},
    })
    node = Node(settings, analyze=lambda *a, **k: None)
    node.start()
    try:
        rate = send(series_dir, node.port, n)
        assert len(node.store.known_instance_paths()) == n, "node did not record every file"
        return rate
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--series", type=Path, help="a directory of DICOM files to send instead")
    parser.add_argument("--only", choices=["node", "storescp"])
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-series-"))
    try:
        if args.series:
            series_dir = args.series
            n = sum(1 for p in series_dir.iterdir() if p.is_file())
        else:
            series_dir = tmp / "series"
            n = len(make_series(series_dir, args.slices))
        size_kb = sum(p.stat().st_size for p in series_dir.iterdir()) / n / 1024
        print(f"series: {n} files, {size_kb:.0f} KiB each")
        rates: dict[str, list[float]] = {"node": [], "storescp": []}
        for i in range(args.rounds):
            for name, fn in (("storescp", round_storescp), ("node", round_node)):
                if args.only and name != args.only:
                    continue
                rates[name].append(fn(series_dir, n))
                print(f"round {i + 1}: {name:9s} {rates[name][-1]:7.1f} img/s", flush=True)
        med = {k: statistics.median(v) for k, v in rates.items() if v}
        for k, v in med.items():
            print(f"median {k:9s} {v:7.1f} img/s")
        if len(med) == 2:
            print(f"ratio node/storescp {med['node'] / med['storescp']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
