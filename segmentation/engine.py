"""Segmentation entry point: lungs + lesions (+ lobes when available) -> Masks."""

from __future__ import annotations

from segmentation.lesions_threshold import segment_lesions_threshold
from segmentation.lobes import segment_lobes
from segmentation.lungs import segment_lungs
from segmentation.types import Masks, Volume

ENGINES = ("threshold", "unet")


class EngineUnavailable(RuntimeError):
    """The requested lesion engine cannot run in this installation (bad input, no retry)."""


def check_engine(engine: str) -> None:
    """Raise EngineUnavailable (or ValueError) unless ``engine`` can run here."""
    if engine not in ENGINES:
        raise ValueError(f"unknown lesion engine {engine!r} (expected one of {ENGINES})")
    if engine == "unet":
        raise EngineUnavailable(
            "the learned lesion model (engine 'unet') is not shipped yet: no weights in "
            "segmentation/weights; use engine 'threshold'"
        )


def segment(volume: Volume, engine: str = "threshold", device: str = "auto") -> Masks:
    """Segment lungs (left/right) and lesions of ``volume``.

    engine: "threshold" (classical, segmentation.lesions_threshold) or "unet" (the learned
        model: not shipped yet, raises EngineUnavailable).
    device: "auto" | "cpu" | "cuda"; the threshold engine runs on the CPU whatever is given.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    check_engine(engine)
    lungs = segment_lungs(volume)
    lung = lungs.left | lungs.right
    lesion = segment_lesions_threshold(volume.hu, lung, volume.spacing_mm)
    lobes = segment_lobes(volume, lungs.left, lungs.right)
    low = sorted(key for key, level in lobes.confidence.items() if level != "high")
    notes = list(lungs.notes) + [f"lobes: {note}" for note in lobes.notes]
    if low:
        notes.append(
            "lobes with low confidence (boundary from the geometric fissure model): " + ", ".join(low)
        )
    return Masks(
        lung_left=lungs.left,
        lung_right=lungs.right,
        lesion=lesion & lung,
        engine=engine,
        lobes=lobes.labels,
        lobe_confidence=dict(lobes.confidence),
        notes=notes,
    )
