"""Soak: four senders against ``lungnode run`` killed with SIGKILL at random points, then a
ledger of what was acknowledged, stored and delivered.

* The node runs as an operator runs it (``python -m node.cli run --config ...``, a temp
  storage root, the threshold engine) and delivers to a real dcmtk ``storescp``
  (``-uf``: every reception gets its own file, so a resend is visible).
* Four sender threads (pynetdicom SCUs) send synthetic chest CT series (the node's phantom,
  100 slices of 128x128, new study/series/instance UIDs for each series); an instance is
  *acknowledged* when its C-STORE response is 0x0000. An instance whose response never came
  (node killed) is sent again after the node is back, until acknowledged; a sender always
  finishes the series it started.
* A killer sends SIGKILL to the node every ``--kill-min-s``..``--kill-max-s`` seconds (at a
  random point: mid-association, mid-analysis, mid-delivery) and restarts it.
* After ``--duration-s`` the killer stops; the node gets up to ``--drain-s`` to deliver.

Ledger (printed, and exit status 1 if a check fails):

* every acknowledged instance is in the spool exactly once (one file, readable, right UIDs)
  and known to the state store;
* every series whose instances were all acknowledged was delivered: one SEG per group (lesions, lungs, lobes) and one SR
  (one set of output SOP Instance UIDs, i.e. one revision) in the series' study at the
  storescp; receptions of the same output UID more than once (a resend after a kill during
  delivery; the UIDs are deterministic, so the PACS replaces) are counted and reported.

    .venv/bin/python benchmarks/soak.py [--duration-s 600] [--senders 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.phantom import write_phantom  # noqa: E402
from node.store import DB_FILENAME, StateStore  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


class NodeUnderTest:
    def __init__(self, workdir: Path, dest_port: int, quiet_period_s: float) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.storage = workdir / "var"
        self.config = workdir / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "network": {"port": self.port, "bind_address": "127.0.0.1", "max_associations": 16},
            "storage": {"root": str(self.storage), "min_free_mb": 64},
            "series": {"quiet_period_s": quiet_period_s},
            "selection": {"min_slices": 30},
            "analysis": {"engine": "threshold", "lung_engine": "classical", "device": "cpu"},
            # the SEGs and the SR only: the ledger counts DICOM objects, not pictures
            "outputs": {"pdf": False, "summary": False, "overlay": False},
            # every phantom has the same patient: the course would (rightly) re-issue reports
            # as revisions, which a ledger of one delivery per series does not count
            "course": {"enabled": False},
            "destinations": [{"ae_title": "SOAKSCP", "host": "127.0.0.1", "port": dest_port,
                              "outputs": ["seg", "sr"]}],
            "delivery": {"retry_initial_delay_s": 1, "retry_max_delay_s": 5, "max_attempts": 100},
        }))
        self.log = workdir / "node.log"
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "run", "--config", str(self.config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.starts += 1
        wait_for(lambda: self.proc.poll() is None and port_accepts(self.port), 120,
                 "the node to accept connections")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, str]] = {}  # sop -> (study, series)
        self.series_sizes: dict[str, int] = {}  # series -> instances sent
        self.series_study: dict[str, str] = {}
        self.complete_series: set[str] = set()
        self.resends = 0
        self.refusals = Counter()


def make_base_series(directory: Path) -> list[pydicom.Dataset]:
    write_phantom(directory, seed=7, slices=100, size=128)
    return [pydicom.dcmread(p) for p in sorted(directory.glob("CT_*.dcm"))]


def renamed_copy(base: list[pydicom.Dataset]) -> tuple[str, str, list[pydicom.Dataset]]:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for ds in base:
        c = copy.deepcopy(ds)
        c.StudyInstanceUID, c.SeriesInstanceUID, c.FrameOfReferenceUID = study, series, frame
        c.SOPInstanceUID = c.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(c)
    return study, series, out


def sender(idx: int, node: NodeUnderTest, base, ledger: Ledger, stop_at: float,
           interval_s: float, rng: random.Random) -> None:
    ae = AE(ae_title=f"SOAK{idx}")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CT)
    assoc = None
    while time.monotonic() < stop_at:
        study, series, datasets = renamed_copy(base)
        with ledger.lock:
            ledger.series_sizes[series] = len(datasets)
            ledger.series_study[series] = study
        for ds in datasets:
            attempts = 0
            while True:
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate("127.0.0.1", node.port, ae_title="LUNGNODE")
                    if not assoc.is_established:
                        time.sleep(0.3)  # the node is down or restarting
                        continue
                attempts += 1
                try:
                    rsp = assoc.send_c_store(ds)
                except Exception:
                    rsp = None
                status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
                if status == 0:
                    with ledger.lock:
                        ledger.acked[str(ds.SOPInstanceUID)] = (study, series)
                        ledger.resends += attempts - 1
                    break
                if status is not None:
                    with ledger.lock:
                        ledger.refusals[hex(status)] += 1
                    time.sleep(0.5)
                if assoc.is_established and status is None:
                    assoc.abort()
        with ledger.lock:
            ledger.complete_series.add(series)
        if assoc is not None and assoc.is_established:
            assoc.release()
        assoc = None
        time.sleep(interval_s * (0.5 + rng.random()))


def killer(node: NodeUnderTest, stop_at: float, lo: float, hi: float, rng: random.Random,
           log: list) -> None:
    while True:
        wait = rng.uniform(lo, hi)
        if time.monotonic() + wait > stop_at:
            return
        time.sleep(wait)
        node.kill()
        down_s = rng.uniform(0, 2)
        time.sleep(down_s)
        t0 = time.monotonic()
        node.start()
        log.append(time.monotonic() - t0 + down_s)


def received_outputs(out_dir: Path) -> dict[str, dict[str, Counter]]:
    """study -> SOP class -> Counter of output SOP Instance UIDs received."""
    found: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for p in out_dir.rglob("*"):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        found[str(ds.StudyInstanceUID)][str(ds.SOPClassUID)][str(ds.SOPInstanceUID)] += 1
    return found


def check_spool(node: NodeUnderTest, ledger: Ledger) -> list[str]:
    problems = []
    files_by_sop: dict[str, list[Path]] = defaultdict(list)
    for p in (node.storage / "spool").glob("*/*/*.dcm"):
        files_by_sop[p.stem].append(p)
    store = StateStore(node.storage / DB_FILENAME)
    try:
        for sop, (study, series) in ledger.acked.items():
            files = files_by_sop.get(sop, [])
            if len(files) != 1:
                problems.append(f"acknowledged instance {sop}: {len(files)} spool file(s)")
                continue
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            if (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)) != (sop, series):
                problems.append(f"acknowledged instance {sop}: wrong UIDs in its file")
            if store.instance(sop) is None:
                problems.append(f"acknowledged instance {sop}: not in the state store")
    finally:
        store.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=600)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--series-interval-s", type=float, default=20,
                    help="mean pause of a sender between two series")
    ap.add_argument("--kill-min-s", type=float, default=8)
    ap.add_argument("--kill-max-s", type=float, default=30)
    ap.add_argument("--quiet-period-s", type=float, default=20)
    ap.add_argument("--drain-s", type=float, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lungnode-soak-"))
    out_dir = work / "storescp"
    out_dir.mkdir()
    scp_port = free_port()
    node = NodeUnderTest(work / "node", scp_port, args.quiet_period_s)
    scp = subprocess.Popen(
        ["storescp", "-aet", "SOAKSCP", "-od", str(out_dir), "-uf", "+xa", "-pm",
         str(scp_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"})
    ledger = Ledger()
    restarts: list[float] = []
    t_start = time.monotonic()
    try:
        wait_for(lambda: port_accepts(scp_port), 30, "storescp")
        base = make_base_series(work / "base")
        node.start()
        stop_at = time.monotonic() + args.duration_s
        threads = [threading.Thread(
            target=sender, args=(i, node, base, ledger, stop_at, args.series_interval_s,
                                 random.Random(args.seed * 100 + i)), daemon=True)
            for i in range(args.senders)]
        threads.append(threading.Thread(
            target=killer, args=(node, stop_at, args.kill_min_s, args.kill_max_s, rng,
                                 restarts), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_s = time.monotonic() - t_start
        # drain: every complete series delivered (or the drain time is over)
        expected = {ledger.series_study[s] for s in ledger.complete_series}
        deadline = time.monotonic() + args.drain_s
        while time.monotonic() < deadline:
            got = received_outputs(out_dir)
            if all(len(got[st][SEG]) >= 1 and len(got[st][SR_3D]) >= 1 for st in expected):
                break
            time.sleep(2)
        drain_s = time.monotonic() - t_start - sent_s
        node.stop()
        got = received_outputs(out_dir)
        problems = check_spool(node, ledger)
        exactly_once = resent = 0
        for series in sorted(ledger.complete_series):
            study = ledger.series_study[series]
            seg, sr = got[study][SEG], got[study][SR_3D]
            # one SEG per group (lesions, lungs, and lobes when they were drawn), one SR
            if len(seg) not in (2, 3) or len(sr) != 1:
                problems.append(f"series {series}: {len(seg)} SEG and {len(sr)} SR output "
                                f"UID(s) delivered (expected 2-3 and 1)")
                continue
            if max(seg.values()) == 1 and max(sr.values()) == 1:
                exactly_once += 1
            else:
                resent += 1
        status = subprocess.run(
            [sys.executable, "-m", "node.cli", "status", "--config", str(node.config)],
            cwd=REPO, capture_output=True, text=True)
        figures = {
            "duration_s": round(sent_s, 1), "drain_s": round(drain_s, 1),
            "senders": args.senders, "kills": node.kills, "starts": node.starts,
            "median_restart_s": round(sorted(restarts)[len(restarts) // 2], 2) if restarts else None,
            "instances_acknowledged": len(ledger.acked),
            "instances_sent_again_after_no_response": ledger.resends,
            "refusal_statuses": dict(ledger.refusals),
            "series_complete": len(ledger.complete_series),
            "series_delivered_exactly_once": exactly_once,
            "series_delivered_with_a_resend_of_the_same_uids": resent,
            "problems": len(problems),
        }
        print(json.dumps(figures, indent=2))
        for p in problems[:50]:
            print("PROBLEM:", p)
        if problems:
            print(status.stdout[-4000:])
        print(f"work folder: {work}" + ("" if args.keep else " (removed)"))
        return 1 if problems else 0
    finally:
        node.stop()
        scp.terminate()
        scp.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
