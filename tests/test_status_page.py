"""The status page (issue 9): served by the real node (``lungnode run``), rendered in headless
Debian Chromium, the screenshot checked; auth and the config's start-up checks."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from node.config import ConfigError, load_settings
from node.phantom import write_phantom
from node_process import NodeProcess
from peers import free_port, storescu, wait_until

TOKEN = "status-page-token-0123"


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("chromium not found: run ./scripts/install.sh (Debian package chromium)")
    return found


def screenshot(url: str, out: Path, profile: Path, size=(1280, 2200)) -> Path:
    """Headless Chromium's screenshot of ``url`` (flags fit running as root in a container)."""
    done = subprocess.run(
        [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", url],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return out


def _get(url: str, token: str | None = None, basic: bool = False):
    headers = {}
    if token and basic:
        headers["Authorization"] = "Basic " + base64.b64encode(f"it:{token}".encode()).decode()
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 12, at_least: int = 30) -> bool:
    close = np.all(np.abs(pixels[..., :3].astype(int) - np.array(rgb)) <= tol, axis=-1)
    return int(close.sum()) >= at_least


@pytest.mark.timeout(1200)  # four (two) phantom analyses on a shared 2-core machine
def test_status_page_in_chromium_shows_queue_deliveries_studies_and_course(tmp_path: Path):
    # two scans of one patient, a week apart, lesions growing
    studies = []
    for index, (date, scale) in enumerate((("20200401", 0.8), ("20200408", 1.3))):
        studies.append(write_phantom(tmp_path / f"s{index}", seed=4, slices=80, size=192,
                                     lesion_scale=scale, patient_id="SP-1", study_date=date))
    page_port = free_port()
    dead_pacs = free_port()      # nothing listens there: deliveries stay pending with errors
    # the SEGs and the SR only: one delivery row per file, and an overlay series has one file
    # per slice, which would push the charts below the screenshot
    with NodeProcess(tmp_path / "node",
                     overrides={"analysis": {"engine": "threshold", "lung_engine": "classical"},
                                "outputs": {"pdf": False, "summary": False, "overlay": False},
                                "destinations": [{"ae_title": "DEADPACS", "host": "127.0.0.1",
                                                  "port": dead_pacs, "outputs": ["seg", "sr"]}],
                                "status_page": {"enabled": True, "port": page_port}}) as node:
        base = f"http://127.0.0.1:{page_port}/"
        for index in range(2):
            sent = storescu(sorted((tmp_path / f"s{index}").glob("*.dcm")), node.port,
                            aec=node.ae_title)
            assert sent.returncode == 0, sent.stderr

            def analysed(n=index + 1):
                report = json.loads(_get(base + "status.json")[2])
                return report["counts"].get("jobs", {}).get("done", 0) >= n

            try:
                wait_until(analysed, 600, 0.5, f"{index + 1} series analysed")
            except TimeoutError:
                pytest.fail(f"not analysed; node log:\n{node.log_tail()}")
        report = wait_until(
            lambda: (r := json.loads(_get(base + "status.json")[2]))["deliveries"]
            and all(d["last_error"] for d in r["deliveries"]) and r, 120, 0.5,
            "the deliveries' errors")
        status, kind, html = _get(base)
        text = html.decode()
        assert report["deliveries"][0]["last_error"] in text
        assert status == 200 and kind.startswith("text/html")
        assert 'id="queue"' in text and 'id="deliveries"' in text and "DEADPACS" in text
        assert studies[1]["study_instance_uid"] in text and "progression" in text
        assert "SP-1" not in text and "Phantom" not in text     # no patient ID or name
        for chart in ("charts/throughput.png", "charts/latency.png",
                      f"charts/course/{studies[1]['study_instance_uid']}.png"):
            status, kind, png = _get(base + chart)
            assert status == 200 and kind == "image/png" and png[:4] == b"\x89PNG"
        status, _, course_html = _get(base + f"course/{studies[0]['study_instance_uid']}")
        assert status == 200 and course_html.count(b"<tr") == 3   # header + two scans
        with pytest.raises(urllib.error.HTTPError) as refused:   # read-only
            urllib.request.urlopen(urllib.request.Request(base, data=b"x", method="POST"))
        assert refused.value.code == 405

        shot = screenshot(base, tmp_path / "status.png", tmp_path / "chromium-profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] >= 1000 and pixels.std() > 20, "blank screenshot"
    # the charts were drawn: the course chart's GGO and consolidation lines, the
    # throughput chart's green bars (colours from node.status_charts)
    assert _has_colour(pixels, (0xf9, 0xa8, 0x25)), "no GGO line of the course chart"
    assert _has_colour(pixels, (0xd8, 0x43, 0x15)), "no consolidation line of the course chart"
    assert _has_colour(pixels, (0x2e, 0x7d, 0x32)), "no throughput bars"
    assert _has_colour(pixels, (0x6a, 0x1b, 0x9a)), "no latency line"


def test_status_page_token_is_required_when_set(tmp_path: Path):
    page_port = free_port()
    with NodeProcess(tmp_path / "node", overrides={
            "status_page": {"enabled": True, "port": page_port, "token": TOKEN}}):
        base = f"http://127.0.0.1:{page_port}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(base)
        assert refused.value.code == 401
        assert "Basic" in refused.value.headers["WWW-Authenticate"]
        with pytest.raises(urllib.error.HTTPError):
            _get(base, "wrong-token-000000000")
        assert _get(base, TOKEN)[0] == 200
        assert _get(base + "charts/latency.png", TOKEN, basic=True)[0] == 200


def test_status_page_config_is_checked_at_start_up(tmp_path: Path):
    with pytest.raises(ConfigError, match="status_page.token is required"):
        load_settings(None, {"status_page": {"enabled": True, "host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="status_page.token"):
        load_settings(None, {"status_page": {"enabled": True, "token": "short"}})
    with pytest.raises(ConfigError, match="status_page.colour: unknown key"):
        load_settings(None, {"status_page": {"colour": "blue"}})
    assert load_settings(None, {"status_page": {"enabled": True, "host": "0.0.0.0",
                                                "token": TOKEN}}).status_page.token == TOKEN
    assert load_settings(None).status_page.enabled is False
    assert load_settings(None).status_page.host == "127.0.0.1"
