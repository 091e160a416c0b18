"""dciodvfy (dicom3tools) as a test helper: the error and warning lines for one file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DCIODVFY = shutil.which("dciodvfy")


DEFLATED = "1.2.840.10008.1.2.1.99"


def _inflated(path: Path, tmp: Path) -> Path:
    """dciodvfy cannot read Deflated Explicit VR Little Endian (it reports the deflated bytes
    as a broken dataset), so such a file is checked after dcmtk's dcmconv inflates it to
    Explicit VR Little Endian: the same dataset, element for element."""
    import pydicom

    meta = pydicom.filereader.read_file_meta_info(path)
    if str(meta.TransferSyntaxUID) != DEFLATED:
        return path
    out = tmp / (path.name + ".explicit.dcm")
    subprocess.run([shutil.which("dcmconv") or "dcmconv", "+te", str(path), str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def _run(path: Path) -> list[str]:
    import tempfile

    if DCIODVFY is None:
        raise RuntimeError("dciodvfy is not installed (dicom3tools)")
    with tempfile.TemporaryDirectory() as tmp:
        target = _inflated(path, Path(tmp))
        proc = subprocess.run([DCIODVFY, "-new", str(target)], capture_output=True, text=True,
                              timeout=120)
    return [line.strip() for line in (proc.stdout + "\n" + proc.stderr).splitlines() if line.strip()]


def dciodvfy_errors(path: Path) -> list[str]:
    """Lines of dciodvfy's report that are errors (contain "Error")."""
    return [line for line in _run(Path(path)) if "Error" in line]


def dciodvfy_warnings(path: Path) -> list[str]:
    """Lines of dciodvfy's report that are warnings."""
    return [line for line in _run(Path(path)) if line.startswith("Warning")]
