"""End-to-end latency and memory: series closed -> SR acknowledged by the PACS.

A 300-slice 512x512 phantom series is sent with dcmtk storescu to a real ``lungnode run``
child process whose destination is a real Orthanc. Printed:
- close_to_sr_s: from the moment the series closed (the job row the node commits when the quiet period ends) to
  the moment Orthanc's REST API lists the SR (polled every 0.1 s; Orthanc only lists an
  instance once it has acknowledged its C-STORE). Target <= 30 s on the 2-core machine.
- peak_rss_mb: the node process's peak resident memory (VmHWM). Target <= 3 GB.

Usage: .venv/bin/python benchmarks/end_to_end.py [--slices 300] [--size 512] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT))

from node.phantom import write_phantom  # noqa: E402
from node_process import NodeProcess  # noqa: E402
from peers import OrthancServer, storescu, wait_until  # noqa: E402

SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _sr_listed(orthanc, study_uid: str) -> bool:
    for series in orthanc.series_of_study(study_uid):
        if series["MainDicomTags"].get("Modality") == "SR":
            return True
    return False


def _series_closed_at(storage: Path, series_uid: str) -> float | None:
    """The node's own record of when the series closed (epoch seconds), if it keeps one."""
    database = storage / "lungnode.sqlite3"
    if not database.exists():
        return None
    with sqlite3.connect(database) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        if "series_uid" not in columns:
            return None
        row = conn.execute(
            "SELECT MIN(created_at) FROM jobs WHERE series_uid = ?", (series_uid,)
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def run_once(workdir: Path, series_dir: Path, quiet_period_s: float, engine: str | None) -> dict:
    import pydicom

    first = next(series_dir.glob("*.dcm"))
    header = pydicom.dcmread(first, stop_before_pixels=True)
    with OrthancServer(workdir / "orthanc", exit_grace_s=0) as orthanc:
        node = NodeProcess(
            workdir / "node",
            destinations=[(orthanc.aet, orthanc.dicom_port)],
            quiet_period_s=quiet_period_s,
            overrides={"analysis": {"engine": engine}} if engine else None,
        ).start()
        try:
            started = time.time()
            sent = storescu(series_dir, node.port, aec=node.ae_title)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-2000:]}")
            sent_at = time.time()
            wait_until(lambda: _sr_listed(orthanc, header.StudyInstanceUID), 600, 0.1, "SR in Orthanc")
            sr_at = time.time()
            peak_mb = _peak_rss_mb(node.proc.pid)
        finally:
            node.stop()
        closed_at = _series_closed_at(node.storage, header.SeriesInstanceUID)
        source = "state store"
        if closed_at is None:
            closed_at = sent_at + quiet_period_s
            source = "storescu end + quiet period"
    return {
        "engine": engine or "config default",
        "send_s": round(sent_at - started, 2),
        "close_to_sr_s": round(sr_at - closed_at, 2),
        "closed_at_from": source,
        "peak_rss_mb": round(peak_mb, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quiet-period-s", type=float, default=2.0)
    parser.add_argument("--engine", choices=("unet", "threshold"), help="default: config.yaml's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lungnode-e2e-") as tmp:
        tmp_path = Path(tmp)
        series_dir = tmp_path / "series"
        write_phantom(series_dir, seed=11, slices=args.slices, size=args.size)
        (series_dir / "truth.json").unlink(missing_ok=True)
        results = [
            run_once(tmp_path / f"round{i}", series_dir, args.quiet_period_s, args.engine)
            for i in range(args.rounds)
        ]
    for result in results:
        print(json.dumps(result))
    latency = statistics.median(r["close_to_sr_s"] for r in results)
    peak = max(r["peak_rss_mb"] for r in results)
    print(
        f"series {args.slices}x{args.size}x{args.size}: close->SR acknowledged median {latency:.1f} s "
        f"(target <= 30 s), node peak RSS {peak:.0f} MB (target <= 3072 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
