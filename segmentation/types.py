"""The typed objects that cross the segmentation boundary (numpy only, no DICOM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


IDENTITY_DIRECTION: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                                               (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class Volume:
    """An HU volume on a regular grid, in the canonical patient orientation.

    hu: float32 or int16 array indexed (z, y, x) in LPS: x increases toward the patient's
        Left, y toward Posterior, z toward Superior (cranial). node.volume.load_series
        reorients every series to this layout (axis permutation and flips chosen from the
        DICOM Image Orientation), so segmentation/ and quant/ may rely on it and on nothing
        else: never guess left, anterior or cranial from the pixel layout.
    spacing_mm: (z, y, x) voxel spacing in millimetres.
    direction: 3x3; row a is the unit vector of array axis a (0 = z, 1 = y, 2 = x) in patient
        axes ordered like the array, (Superior, Posterior, Left), i.e. LPS (z, y, x). The
        identity (the default) means exactly canonical; an oblique-within-tolerance series
        carries its small off-diagonal terms here.
    origin_mm: patient position of voxel (0, 0, 0), same (Superior, Posterior, Left) order
        (LPS z, y, x in mm); (0, 0, 0) when unknown.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...] = IDENTITY_DIRECTION
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        if len(self.spacing_mm) != 3 or any(s <= 0 for s in self.spacing_mm):
            raise ValueError(f"Volume.spacing_mm must be three positive numbers, got {self.spacing_mm}")
        d = np.asarray(self.direction, dtype=np.float64)
        if d.shape != (3, 3) or not np.allclose(d @ d.T, np.eye(3), atol=1e-3):
            raise ValueError(f"Volume.direction must be a 3x3 orthonormal matrix, got {self.direction}")
        if np.any(np.diag(d) < 0.5):
            raise ValueError(
                "Volume.direction is not near the canonical LPS (z, y, x) axes "
                f"(diagonal {np.diag(d).round(3).tolist()}): reorient the array first"
            )
        if len(self.origin_mm) != 3:
            raise ValueError(f"Volume.origin_mm must be three numbers, got {self.origin_mm}")

    @property
    def voxel_volume_ml(self) -> float:
        z, y, x = self.spacing_mm
        return z * y * x / 1000.0

    def patient_position_mm(self, index_zyx) -> np.ndarray:
        """LPS patient coordinates (x, y, z) in mm, DICOM order, of voxel index (z, y, x)."""
        idx = np.asarray(index_zyx, dtype=np.float64)
        d = np.asarray(self.direction, dtype=np.float64)
        zyx = np.asarray(self.origin_mm) + (idx * np.asarray(self.spacing_mm)) @ d
        return zyx[..., ::-1]


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
    notes: quality remarks from the segmentation (e.g. "lungs touch: split by fallback").
    """

    lung_left: np.ndarray
    lung_right: np.ndarray
    lesion: np.ndarray
    engine: str
    lobes: np.ndarray | None = None
    lobes_unavailable_reason: str | None = None
    lobe_confidence: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def lung(self) -> np.ndarray:
        return self.lung_left | self.lung_right
