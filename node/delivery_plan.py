"""Which output files go to which destination (``destinations[].outputs``).

An output file's kind (``seg``, ``sr``, ``pdf``, ``summary``, ``overlay``:
node.config.OUTPUT_KINDS) follows from the name node.analysis gives it (``kind_of``); the
delivery enqueue step (node.worker) asks ``files_for`` for each destination and enqueues only
those. A file without a known kind is never sent anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from node.config import Destination


def files_for(destination: Destination, files: Sequence[Path],
              kinds: Mapping[str, str]) -> list[Path]:
    """The files of ``files`` (in their order) whose kind ``destination`` gets.

    ``kinds`` maps a file name to its kind (``kind_of``).
    """
    wanted = set(destination.outputs)
    return [f for f in files if kinds.get(Path(f).name) in wanted]


def kind_of(name: str) -> str | None:
    """The kind of an output file from its name (the names node.analysis writes)."""
    if name.startswith("seg") and name.endswith(".dcm"):
        return "seg"
    if name == "sr.dcm":
        return "sr"
    if name == "report.dcm":
        return "pdf"
    if name == "summary.dcm":
        return "summary"
    if name.startswith("overlay_") and name.endswith(".dcm"):
        return "overlay"
    return None
