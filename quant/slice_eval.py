"""Slice-level and slice x lobe-level sensitivity / specificity of a lesion mask against
radiologists' presence labels (COVID-CT-MD style: per axial slice "infected" and one flag per
lobe). Arrays only: node.evaluate_slices reads the files.

A slice (or a slice-lobe: the slice restricted to one lobe's label) is called positive when
the lesion area in it is at least ``floor_mm2`` (and above zero), area = voxels x the
in-plane pixel area. The default floor is 25 mm^2 (issue 6); the figures are also computed at
other floors (``FLOORS_MM2``) to show how much they depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from segmentation.types import LOBE_KEYS, Lobe

DEFAULT_FLOOR_MM2 = 25.0
FLOORS_MM2 = (0.0, 10.0, 25.0, 50.0, 100.0)
#: labels.csv lobe columns -> lobe label values
LABEL_LOBES: dict[str, Lobe] = {"LUL": Lobe.LEFT_UPPER, "LLL": Lobe.LEFT_LOWER,
                                "RUL": Lobe.RIGHT_UPPER, "RML": Lobe.RIGHT_MIDDLE,
                                "RLL": Lobe.RIGHT_LOWER}


@dataclass(frozen=True)
class SliceLabel:
    """Labels of one axial slice: its index z in the canonical volume, infected, lobes."""

    z: int
    infected: bool
    lobes: dict[str, bool]       # keys of LABEL_LOBES


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def specificity(self) -> float | None:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else None

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.tn + other.tn,
                         self.fn + other.fn)

    def to_json_dict(self) -> dict:
        return {**asdict(self), "sensitivity": self.sensitivity, "specificity": self.specificity}


def confusion(predicted: np.ndarray, truth: np.ndarray) -> Confusion:
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    return Confusion(int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & ~t)),
                     int(np.sum(~p & t)))


@dataclass(frozen=True)
class SliceAreas:
    """Lesion area (mm^2) per labelled slice, total and per label lobe column."""

    z: np.ndarray                 # (n,) canonical slice index
    slice_mm2: np.ndarray         # (n,)
    lobe_mm2: dict[str, np.ndarray]   # column -> (n,)
    infected: np.ndarray          # (n,) bool
    lobe_labels: dict[str, np.ndarray]  # column -> (n,) bool


def lesion_areas(lesion: np.ndarray, lobes: np.ndarray | None, spacing_mm,
                 labels: list[SliceLabel]) -> SliceAreas:
    """Lesion area per labelled slice (and per lobe when ``lobes`` is given)."""
    if lobes is not None and lobes.shape != lesion.shape:
        raise ValueError(f"lobes {lobes.shape} and lesion {lesion.shape} differ in shape")
    pixel_mm2 = float(spacing_mm[1]) * float(spacing_mm[2])
    z = np.array([lab.z for lab in labels], dtype=int)
    if z.size and (z.min() < 0 or z.max() >= lesion.shape[0]):
        raise ValueError(f"labelled slice index outside the volume (0..{lesion.shape[0] - 1})")
    lesion = lesion.astype(bool, copy=False)
    slice_mm2 = lesion[z].sum(axis=(1, 2)) * pixel_mm2 if z.size else np.zeros(0)
    lobe_mm2 = {}
    if lobes is not None:
        sub_lesion, sub_lobes = lesion[z], lobes[z]
        for column, lobe in LABEL_LOBES.items():
            lobe_mm2[column] = (sub_lesion & (sub_lobes == int(lobe))).sum(axis=(1, 2)) * pixel_mm2
    return SliceAreas(
        z=z, slice_mm2=np.asarray(slice_mm2, dtype=np.float64), lobe_mm2=lobe_mm2,
        infected=np.array([lab.infected for lab in labels], bool),
        lobe_labels={c: np.array([lab.lobes.get(c, False) for lab in labels], bool)
                     for c in LABEL_LOBES})


def _positive(area: np.ndarray, floor_mm2: float) -> np.ndarray:
    return (area > 0) & (area >= floor_mm2)


def evaluate(areas: SliceAreas, floors_mm2=FLOORS_MM2) -> dict[float, dict[str, Confusion]]:
    """{floor: {"slice": Confusion, "slice_lobe": Confusion (absent without lobes)}}."""
    out: dict[float, dict[str, Confusion]] = {}
    for floor in floors_mm2:
        result = {"slice": confusion(_positive(areas.slice_mm2, floor), areas.infected)}
        if areas.lobe_mm2:
            total = Confusion(0, 0, 0, 0)
            for column in LABEL_LOBES:
                total = total + confusion(_positive(areas.lobe_mm2[column], floor),
                                          areas.lobe_labels[column])
            result["slice_lobe"] = total
        out[float(floor)] = result
    return out


def lobe_key(column: str) -> str:
    """labels.csv column -> segmentation.types.LOBE_KEYS name (e.g. "LUL" -> "left_upper")."""
    return LOBE_KEYS[LABEL_LOBES[column]]
