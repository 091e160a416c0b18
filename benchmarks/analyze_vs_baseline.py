"""Whole `lungnode analyze` of a 300-slice 512 x 512 series: this checkout against a baseline.

    .venv/bin/python benchmarks/analyze_vs_baseline.py [--baseline 1b62895] [--rounds 3]
        [--slices 300] [--config FILE]

The series is the real LIDC-IDRI-0001 (133 x 512 x 512, 2.5 mm) resampled along z to
``--slices`` slices and written as DICOM (benchmarks/stages.py ``series_files``; not timed).
Each round runs ``python -m node.cli analyze SERIES --out DIR`` once from this checkout and once
from the baseline revision (its whole tree, weights included, extracted with ``git archive``
into a temporary folder), alternating which goes first, with the same interpreter, so both see
the same machine load. The wall time of the command is what a user waits for: interpreter
start, model loading, decoding, segmentation, measurement and every output the revision writes.
This checkout runs twice per round: with its default outputs (three SEGs, SR, PDF report,
summary capture, 300 overlay images: what the node writes today) and with the same outputs as
the baseline wrote (``outputs.pdf``, ``summary`` and ``overlay`` off: SEG, SR and
measurements.json). Medians over ``--rounds`` and their ratios (this / baseline) are printed;
the ratios are the figures to compare across machines, the seconds are this machine's.

The default baseline, 1b62895, is the last revision before issue 6 (learned lungs, traced
lobes, lesion v2): the "today" that issue's speed target refers to. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def extract(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def analyze_seconds(tree: Path, series: Path, out: Path, config: Path | None) -> float:
    cmd = [sys.executable, "-m", "node.cli", "analyze", str(series), "--out", str(out)]
    if config is not None:
        cmd += ["--config", str(config)]
    env = dict(os.environ, PYTHONPATH=str(tree))
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"analyze failed in {tree} (rc {done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def config_without_pictures(path: Path) -> Path:
    """The embedded default config with the PDF, summary and overlay outputs off."""
    import yaml

    config = yaml.safe_load((REPO / "node" / "default_config.yaml").read_text())
    config["outputs"].update(pdf=False, summary=False, overlay=False)
    path.write_text(yaml.safe_dump(config))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="1b62895", help="git revision to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    args = ap.parse_args(argv)
    from stages import series_files

    with tempfile.TemporaryDirectory(prefix="lungnode-vs-") as tmp_name:
        tmp = Path(tmp_name)
        series = tmp / "series"
        series.mkdir()
        files = series_files(args.slices, series)
        if files and files[0].parent != series:  # as stored: link the originals
            for f in files:
                (series / f.name).symlink_to(f)
        base = f"baseline {args.baseline}"
        no_pictures = config_without_pictures(tmp / "no_pictures.yaml")
        runs = {"this checkout": (REPO, None), "this, no pictures": (REPO, no_pictures),
                base: (extract(args.baseline, tmp / "baseline"), None)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        print(f"series: {args.slices} slices of 512 x 512 (LIDC-IDRI-0001); "
              f"python {sys.executable}; cpus {os.cpu_count()}; rounds {args.rounds}")
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for i, name in enumerate(order):
                tree, config = runs[name]
                s = analyze_seconds(tree, series, tmp / f"out-{r}-{i}", config)
                times[name].append(s)
                print(f"  round {r + 1} {name:22s} {s:7.2f} s", flush=True)
        med = {name: statistics.median(v) for name, v in times.items()}
        for name, m in med.items():
            print(f"median {name:22s} {m:7.2f} s")
        for name in ("this checkout", "this, no pictures"):
            ratio = med[name] / med[base]
            print(f"ratio {name} / baseline {ratio:7.3f}  ({'no slower' if ratio <= 1 else 'slower'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
