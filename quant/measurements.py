"""The measurement dataclasses that quant/ produces and node/ encodes.

Units are in the names. A value that cannot be computed is None, with the reason in
``quality_flags`` (never 0.0 for "unknown").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from quant.involvement import LesionComponent
from quant.quality import QualityFinding


@dataclass(frozen=True)
class RegionMeasurement:
    """One lung region (left lung, right lung)."""

    volume_ml: float
    lesion_volume_ml: float
    ggo_volume_ml: float
    consolidation_volume_ml: float
    lesion_pct: float | None


@dataclass(frozen=True)
class LobeMeasurement:
    volume_ml: float
    lesion_volume_ml: float
    lesion_pct: float | None
    score: int | None          # 0-5 as in the reference study
    confidence: str | None     # "high" | "low" from the lobe method
    # percent of the lobe that counts toward its score: the lesion without nodule-like,
    # calcified and speck components (quant.involvement); None when lesion_pct is None
    involvement_pct: float | None = None


@dataclass(frozen=True)
class Measurements:
    lung_volume_ml: float
    lesion_volume_ml: float
    ggo_volume_ml: float
    consolidation_volume_ml: float
    lesion_pct: float | None
    ggo_pct: float | None
    consolidation_pct: float | None
    ct_score: int | None                 # 0-25, sum of the five lobe scores; None without lobes
    ct_score_equivalent: float | None    # from lesion_pct via the study's quadratic fit
    involved_lobes: int | None           # 0-5; None without lobes
    hellinger_distance: float | None     # lung HU histogram vs the shipped normal reference
    iou_vs_reference: float | None
    regions: dict[str, RegionMeasurement]          # "left_lung", "right_lung"
    lobes: dict[str, LobeMeasurement] | None       # keys from segmentation.types.LOBE_KEYS
    engine: str
    quality_flags: list[str] = field(default_factory=list)
    ggo_min_hu: float = -750.0
    consolidation_min_hu: float = -350.0
    # typed quality flags (quant.quality.QualityCode); their messages are also in quality_flags
    quality_findings: list[QualityFinding] = field(default_factory=list)
    # lesion components left out of lobe scores / CT score / involved lobes (quant.involvement)
    excluded_lesions: list[LesionComponent] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        """The measurements.json document (keys are a contract, see issue 2)."""
        return asdict(self)
