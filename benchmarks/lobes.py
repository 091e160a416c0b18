"""Lobe stage time (segment_lobes) on real LIDC-IDRI-0001: this checkout against a baseline.

    .venv/bin/python benchmarks/lobes.py [--baseline REV] [--rounds 3] [--slices 300]

Times segmentation.lobes.segment_lobes on LIDC-IDRI-0001 as stored (133 x 512 x 512, 2.5 mm)
and resampled (nearest) to ``--slices`` slices (300 x 512 x 512, 1.11 mm), with the lung masks
of segmentation.lungs (computed once, not timed). With ``--baseline REV`` the segmentation
package of git revision REV is extracted to a temporary folder and its segment_lobes is timed
on the same inputs in the same process, alternating with this checkout's (so both see the
same machine load); medians of ``--rounds`` runs are printed. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def _baseline_segment_lobes(rev: str, tmp: Path):
    """segment_lobes of ``rev``'s segmentation package, imported as ``baseline_segmentation``."""
    pkg = tmp / "baseline_segmentation"
    pkg.mkdir()
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "segmentation/"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{name}"], check=True,
                                 capture_output=True, text=True).stdout
            (pkg / Path(name).name).write_text(src.replace("from segmentation.", "from baseline_segmentation."))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("baseline_segmentation.lobes").segment_lobes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="git revision to compare with (e.g. main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args(argv)

    from evaluate_lobes import load_lidc
    from segmentation.lobes import segment_lobes
    from segmentation.lungs import segment_lungs
    from segmentation.types import Volume

    vol = load_lidc(args.data / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series")
    lungs = segment_lungs(vol)
    idx = (np.arange(args.slices) * vol.hu.shape[0] / args.slices).astype(int)
    big = Volume(vol.hu[idx], (vol.spacing_mm[0] * vol.hu.shape[0] / args.slices, *vol.spacing_mm[1:]))
    cases = {f"{vol.hu.shape}": (vol, lungs.left, lungs.right),
             f"{big.hu.shape}": (big, lungs.left[idx], lungs.right[idx])}
    with tempfile.TemporaryDirectory() as tmp:
        funcs = {"this checkout": segment_lobes}
        if args.baseline:
            funcs[f"baseline {args.baseline}"] = _baseline_segment_lobes(args.baseline, Path(tmp))
        times = {(c, f): [] for c in cases for f in funcs}
        for _ in range(args.rounds):
            for c, (v, left, right) in cases.items():
                for f, fn in funcs.items():
                    t0 = time.perf_counter()
                    fn(v, left, right)
                    times[c, f].append(time.perf_counter() - t0)
    for (c, f), ts in times.items():
        print(f"segment_lobes {c:>16}  {f:<24} median {np.median(ts):6.2f} s  (runs: "
              + ", ".join(f"{t:.2f}" for t in ts) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
