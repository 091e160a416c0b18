"""The node as a site installs it: ``pip install`` of a built wheel into a fresh venv.

The wheel is built from this checkout, installed with its dependencies into a new virtual
environment, and the installed ``lungnode`` is run from an unrelated folder: ``check-config``
on the embedded default, ``phantom`` + ``analyze`` with the default engine (weights and the
normal HU reference must be package data), and ``run`` answering a real dcmtk ``echoscu``.
Slow (a fresh venv with torch): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from peers import REPO_ROOT, _port_accepts, free_port, wait_until

pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=900, env=None):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    # build from a clean copy of the source tree: a stale build/ in the checkout would leak
    # files that are no longer in the project into the wheel
    # (only what git tracks or would track: no venv, build output, caches or downloads)
    source = work / "source"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src, dst = REPO_ROOT / name, source / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(source)], cwd=work)
    wheels = sorted(dist.glob("lungnode-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    base_python = getattr(sys, "_base_executable", None) or shutil.which("python3")
    _run([base_python, "-m", "venv", str(venv)], cwd=work)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", str(wheels[0])],
         cwd=work)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return wheels[0], venv, elsewhere


def _env_without_checkout():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_holds_config_and_data_files(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "node/default_config.yaml" in names
    assert any(n.startswith("segmentation/weights/") and n.endswith(".pt") for n in names)
    assert "quant/data/normal_lung_hu_reference.json" in names
    packaged = zipfile.ZipFile(wheel).read("node/default_config.yaml").decode()
    assert packaged == (REPO_ROOT / "config.yaml").read_text(encoding="utf-8")


def test_installed_node_imports_from_the_venv_not_the_checkout(installed):
    _, venv, elsewhere = installed
    out = _run([str(venv / "bin" / "python"), "-c", "import node; print(node.__file__)"],
               cwd=elsewhere, env=_env_without_checkout()).stdout.strip()
    assert str(venv) in out and str(REPO_ROOT) not in out


def test_check_config_on_the_embedded_default(installed):
    _, venv, elsewhere = installed
    out = _run([str(venv / "bin" / "lungnode"), "check-config"], cwd=elsewhere,
               env=_env_without_checkout()).stdout
    assert "ae_title: LUNGNODE" in out
    # the embedded default keeps its data under the folder the node runs from
    assert str(elsewhere.resolve() / "var") in out


def test_phantom_and_analyze_with_the_installed_package(installed):
    _, venv, elsewhere = installed
    env = _env_without_checkout()
    lungnode = str(venv / "bin" / "lungnode")
    _run([lungnode, "phantom", "--out", "ph", "--slices", "40", "--size", "128"], cwd=elsewhere, env=env)
    _run([lungnode, "analyze", "ph", "--out", "res"], cwd=elsewhere, env=env)
    measurements = json.loads((elsewhere / "res" / "measurements.json").read_text())
    assert measurements["lung_volume_ml"] > 0
    assert (elsewhere / "res" / "seg.dcm").is_file() and (elsewhere / "res" / "sr.dcm").is_file()


def test_run_answers_echo(installed, tmp_path):
    _, venv, elsewhere = installed
    echoscu = shutil.which("echoscu")
    if echoscu is None:
        pytest.fail("dcmtk echoscu not installed (scripts/install.sh installs it)")
    port = free_port()
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen([str(venv / "bin" / "lungnode"), "run", "--port", str(port)],
                            cwd=elsewhere, env=_env_without_checkout(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or _port_accepts(port), 120, 0.2,
                   "the installed lungnode run to listen")
        assert proc.poll() is None, (tmp_path / "node.log").read_text()
        _run([echoscu, "-aec", "LUNGNODE", "127.0.0.1", str(port)], cwd=elsewhere)
        assert (elsewhere / "var").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, (tmp_path / "node.log").read_text()
