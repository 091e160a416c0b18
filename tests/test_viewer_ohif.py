"""The viewer radiologists use: OHIF 3.13.2 (prebuilt @ohif/app) over Orthanc's DICOMweb.

``lungnode analyze`` writes its outputs for a real CT series; the CT and every output go into
an Orthanc with the DICOMweb plugin; OHIF's static files and Orthanc's DICOMweb are served
from one origin on 127.0.0.1 (tests/viewer_server.py); Debian's chromium, driven by
puppeteer-core (tests/ohif/probe.js), opens the study, double-clicks each SEG thumbnail and
accepts OHIF's prompt, then reads back the labelmap OHIF holds and the segment volumes OHIF
computes. Checked here: every SEG is held in one labelmap layer, voxel for voxel per
referenced CT slice and segment, and OHIF's volumes equal ours; the PDF report opens in
OHIF's PDF viewer, the summary and the overlay series display. Screenshots are kept under
the test's folder (and LUNGNODE_VIEWER_SHOTS, when set, gets a copy).

Installed by scripts/install.sh (chromium, orthanc-dicomweb, the OHIF pack and
puppeteer-core under .viewer/). The test skips only when chromium cannot start here, with
the reason; anything else missing is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_validation import dciodvfy_errors
from analysed_ct import analyse_cip_ct64
from peers import REPO_ROOT, OrthancServer
from viewer_server import ViewerServer

pytestmark = pytest.mark.slow

VIEWER_DIR = REPO_ROOT / ".viewer"
OHIF_DIST = VIEWER_DIR / "package" / "dist"
PUPPETEER = VIEWER_DIR / "node_modules" / "puppeteer-core"
PROBE = Path(__file__).parent / "ohif" / "probe.js"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
#: The segment whose centre the screenshot of each SEG shows.
JUMP_TO = {"seg.dcm": "Ground glass opacity", "seg_lungs.dcm": "Left lung",
           "seg_lobes.dcm": "Right middle lobe"}
#: Segment number -> measurements.json value, per SEG file.
VOLUME_KEYS = {
    "seg.dcm": {1: ("ggo_volume_ml",), 2: ("consolidation_volume_ml",)},
    "seg_lungs.dcm": {1: ("regions", "left_lung", "volume_ml"),
                      2: ("regions", "right_lung", "volume_ml")},
    "seg_lobes.dcm": {i + 1: ("lobes", key, "volume_ml") for i, key in enumerate(
        ("left_upper", "left_lower", "right_upper", "right_middle", "right_lower"))},
}


def _chromium() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/install.sh installs Debian's chromium): "
                    "OHIF viewer test not run")
    with tempfile.TemporaryDirectory() as profile:
        try:
            proc = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                   "--dump-dom", "about:blank"], capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.skip("chromium did not start within 60 s here: OHIF viewer test not run")
    if proc.returncode != 0 or "<html" not in proc.stdout:
        pytest.skip(f"chromium cannot start here (rc={proc.returncode}): "
                    f"{proc.stderr.strip()[-300:]}; OHIF viewer test not run")
    return binary


def _require_installed() -> None:
    missing = [str(p) for p in (OHIF_DIST / "index.html", PUPPETEER, DICOMWEB_PLUGIN)
               if not p.exists()]
    if missing:
        pytest.fail("not installed: " + ", ".join(missing) + " (run scripts/install.sh)")


def _upload(orthanc: OrthancServer, files: list[Path]) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for f in files:
        request = urllib.request.Request(f"{orthanc.http_url}/instances", data=f.read_bytes(),
                                         method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with opener.open(request, timeout=60) as answer:
            status = json.loads(answer.read())
        assert status.get("Status") in ("Success", "AlreadyStored"), (f, status)


def _file_voxels(path: Path) -> dict[str, dict[int, int]]:
    """{referenced CT SOP Instance UID: {segment number: voxel count}} of a SEG file."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    out: dict[str, dict[int, int]] = {}
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        count = int(np.count_nonzero(pixels[frame]))
        counts = out.setdefault(str(sop), {})
        if count:
            counts[segment] = counts.get(segment, 0) + count
    return out


def _lookup(document: dict, keys: tuple[str, ...]) -> float:
    value = document
    for key in keys:
        value = value[key]
    return float(value)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, Path]:
    """(CT folder, output folder) of `lungnode analyze` on a real 79-slice chest CT."""
    return analyse_cip_ct64(tmp_path_factory)


@pytest.mark.timeout(900)
def test_ohif_shows_every_output_faithfully(analysed, tmp_path: Path) -> None:
    chromium = _chromium()
    _require_installed()
    ct, out = analysed
    seg_files = [out / name for name in VOLUME_KEYS]
    documents = {"report": out / "report.dcm", "summary": out / "summary.dcm",
                 "overlay": out / "overlay_0040.dcm"}
    outputs = [*seg_files, out / "sr.dcm", out / "report.dcm", out / "summary.dcm",
               *sorted(out.glob("overlay_*.dcm"))]
    for f in outputs[:7] + outputs[-1:]:
        assert dciodvfy_errors(f) == [], f"dciodvfy errors in {f.name}"
    measurements = json.loads((out / "measurements.json").read_text())

    orthanc = OrthancServer(
        tmp_path / "orthanc", plugins=[str(DICOMWEB_PLUGIN)],
        extra_config={"DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                                   "WadoRoot": "/wado", "Ssl": False,
                                   "StudiesMetadata": "Full", "SeriesMetadata": "Full"}})
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with orthanc:
        _upload(orthanc, sorted(ct.glob("*.dcm")) + outputs)
        study = str(pydicom.dcmread(seg_files[0], stop_before_pixels=True).StudyInstanceUID)
        with ViewerServer(OHIF_DIST, orthanc.http_url) as server:
            headers = {f: pydicom.dcmread(f, stop_before_pixels=True)
                       for f in [*seg_files, *documents.values()]}
            request = {
                "url": server.url, "chromium": chromium, "study": study,
                "userDataDir": str(tmp_path / "chromium-profile"), "shots": str(shots),
                "timeoutMs": 90000, "mode": "segmentation",
                "segs": [{"name": f.stem, "series": str(headers[f].SeriesInstanceUID),
                          "number": int(headers[f].SeriesNumber), "jumpTo": JUMP_TO[f.name]}
                         for f in seg_files],
                "documents": [{"name": name, "kind": "pdf" if name == "report" else "image",
                               "series": str(headers[f].SeriesInstanceUID),
                               "number": int(headers[f].SeriesNumber),
                               "scroll": 40 if name == "overlay" else 0}
                              for name, f in documents.items()],
            }
            env = dict(os.environ, NODE_PATH=str(VIEWER_DIR / "node_modules"))
            proc = subprocess.run(["node", str(PROBE), json.dumps(request)], capture_output=True,
                                  text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
    keep = os.environ.get("LUNGNODE_VIEWER_SHOTS")
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout)
    assert result["errors"] == [], (result["errors"], proc.stderr[-3000:], result["console"][-10:])

    for f in seg_files:
        held = result["segs"][f.stem]
        assert held["layers"] == 1, f"{f.name}: OHIF split the SEG into {held['layers']} layers"
        expected = _file_voxels(f)
        got = {sop: {int(k): v for k, v in counts.items()} for sop, counts in held["slices"].items()}
        assert set(got) == set(expected), f"{f.name}: OHIF holds other slices than the file"
        wrong = {sop: (got[sop], expected[sop]) for sop in expected if got[sop] != expected[sop]}
        assert not wrong, f"{f.name}: {len(wrong)} slices differ, e.g. {next(iter(wrong.items()))}"
        assert held["volumesReady"], f"{f.name}: OHIF computed no segment volumes"
        for number, keys in VOLUME_KEYS[f.name].items():
            if keys[0] == "lobes" and not measurements.get("lobes"):
                continue
            ours = _lookup(measurements, keys)
            segment = held["segments"][str(number)]
            volume = segment["volume"]
            ml = volume / 1000.0 if segment["unit"] in ("mm³", "mm3", "mm^3") else volume
            assert ml == pytest.approx(ours, rel=1e-3, abs=0.05), (f.name, number, segment, ours)

    pdf = result["documents"]["report"]["pdf"]
    assert pdf["magic"] == "%PDF-"
    size = (out / "report.pdf").stat().st_size
    # OHIF shows our PDF whole (with the NUL that pads an odd length to DICOM's even length)
    assert pdf["length"] in (size, size + size % 2)
    assert result["documents"]["summary"]["viewportImage"]["images"] >= 1
    assert result["documents"]["overlay"]["viewportImage"]["images"] >= 1
    for name in ("study", "seg_seg", "seg_seg_lungs", "seg_seg_lobes", "report", "summary",
                 "overlay"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, f"screenshot {name} is empty"
