"""The typed objects that cross the segmentation boundary (numpy only, no DICOM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


@dataclass(frozen=True)
class Volume:
    """An HU volume on a regular grid.

    hu: float32 or int16 array indexed (z, y, x): z = slice index along the slice normal
        (increasing slice position), y = row, x = column, exactly as the source slices.
    spacing_mm: (z, y, x) voxel spacing in millimetres.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if len(self.spacing_mm) != 3 or any(s <= 0 for s in self.spacing_mm):
            raise ValueError(f"Volume.spacing_mm must be three positive numbers, got {self.spacing_mm}")

    @property
    def voxel_volume_ml(self) -> float:
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0


class Lobe(IntEnum):
    """Lobe labels in Masks.lobes (0 = not lung / unassigned)."""

    LEFT_UPPER = 1
    LEFT_LOWER = 2
    RIGHT_UPPER = 3
    RIGHT_MIDDLE = 4
    RIGHT_LOWER = 5


LOBE_KEYS: dict[Lobe, str] = {
    Lobe.LEFT_UPPER: "left_upper",
    Lobe.LEFT_LOWER: "left_lower",
    Lobe.RIGHT_UPPER: "right_upper",
    Lobe.RIGHT_MIDDLE: "right_middle",
    Lobe.RIGHT_LOWER: "right_lower",
}


@dataclass
class Masks:
    """Segmentation result on the Volume's grid (all boolean arrays have Volume.hu's shape).

    lobes: uint8 label map with Lobe values, or None when lobes are not available; then
        lobes_unavailable_reason says why (it is reported, never turned into zeros).
    lobe_confidence: per lobe key (LOBE_KEYS values) "high" | "low" when lobes exist.
    engine: the lesion engine that produced ``lesion`` ("threshold" | "unet").
    lung_engine: the lung engine that produced the lungs ("net" | "classical").
    notes: quality remarks from the segmentation (e.g. "lungs touch: split by fallback").
    """

    lung_left: np.ndarray
    lung_right: np.ndarray
    lesion: np.ndarray
    engine: str
    lobes: np.ndarray | None = None
    lung_engine: str = "classical"
    lobes_unavailable_reason: str | None = None
    lobe_confidence: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def lung(self) -> np.ndarray:
        return self.lung_left | self.lung_right
