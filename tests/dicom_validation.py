"""dciodvfy (dicom3tools) as a test helper: the error and warning lines for one file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DCIODVFY = shutil.which("dciodvfy")


def _run(path: Path) -> list[str]:
    if DCIODVFY is None:
        raise RuntimeError("dciodvfy is not installed (dicom3tools)")
    proc = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True,
                          timeout=120)
    return [line.strip() for line in (proc.stdout + "\n" + proc.stderr).splitlines() if line.strip()]


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of dciodvfy's report that are errors (contain "Error")."""
    return [line for line in _run(Path(path)) if "Error" in line]


def dciodvfy_warnings(path: Path) -> list[str]:
    """Lines of dciodvfy's report that are warnings."""
    return [line for line in _run(Path(path)) if line.startswith("Warning")]
