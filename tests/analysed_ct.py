"""The real chest CT that the viewer tests read: CIP ct-64 (79 slices), analysed once per
module by `lungnode analyze --engine threshold` (shared by the OHIF and dcmqi tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peers import REPO_ROOT, shared_data_dir


def analyse_cip_ct64(tmp_path_factory) -> tuple[Path, Path]:
    """(CT folder, output folder); skips when shared/data is not mounted."""
    ct = shared_data_dir() / "chest_imaging_platform_ct64" / "ct-64Dicom"
    if not ct.is_dir():
        pytest.skip("shared/data is not mounted")
    out = tmp_path_factory.mktemp("analysed")
    proc = subprocess.run([sys.executable, "-m", "node.cli", "analyze", "--engine", "threshold",
                           "--out", str(out), str(ct)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ct, out
