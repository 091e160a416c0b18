"""The patient's course: one patient's analysed scans in acquisition order, each measure's
value at every scan, its change since the prior scan and a plain-language summary.

Pure: scans in (plain dataclasses with the measurement values), a :class:`Course` out. The
node finds the patient's earlier scans in its state store (by Patient ID and Issuer of
Patient ID) and encodes the result (node.outputs.sr, measurements.json).

* Order: by acquisition time, never by arrival, so a late or re-sent prior takes its place
  in the course; the scan analysed now is compared with the scan acquired just before it
  (none if it is the earliest). One entry per study: when a study was analysed more than
  once (a re-sent or amended series), the latest analysis stands for it.
* Change since the prior, per scan: absolute (value - prior value) and relative (percent of
  the prior value; None when the prior value is 0 or missing), and the days between the two.
* Trend of a volume (lesions, GGO, consolidation): ``progression`` when it grew by more than
  the stable band, ``absorption`` when it shrank by more, else ``stable``. The stable band is
  max(stable_relative_pct of the prior volume, stable_absolute_ml): small lesions changing
  by a few ml are within the reproducibility of the segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Mapping, Sequence

PROGRESSION = "progression"
STABLE = "stable"
ABSORPTION = "absorption"

#: measure key -> (unit, label) for the whole lung, in report order
WHOLE_LUNG_MEASURES: dict[str, tuple[str, str]] = {
    "lung_volume_ml": ("ml", "lung volume"),
    "lesion_volume_ml": ("ml", "lesion volume"),
    "ggo_volume_ml": ("ml", "GGO volume"),
    "consolidation_volume_ml": ("ml", "consolidation volume"),
    "lesion_pct": ("%", "lesions, percent of lung"),
    "ggo_pct": ("%", "GGO, percent of lung"),
    "consolidation_pct": ("%", "consolidation, percent of lung"),
    "ct_score": ("score", "CT score"),
    "involved_lobes": ("lobes", "involved lobes"),
}
#: per-lobe measure key -> (unit, label)
LOBE_MEASURES: dict[str, tuple[str, str]] = {
    "lesion_volume_ml": ("ml", "lesion volume"),
    "lesion_pct": ("%", "lesions, percent of lobe"),
    "score": ("score", "lobe score"),
}
DEFAULT_STABLE_RELATIVE_PCT = 10.0
DEFAULT_STABLE_ABSOLUTE_ML = 5.0


@dataclass(frozen=True)
class CourseScan:
    """One analysed scan of the patient, as the course needs it."""

    study_uid: str
    series_uid: str
    acquired_at: datetime                              # timezone-aware UTC
    values: Mapping[str, float | None]                 # WHOLE_LUNG_MEASURES keys
    lobes: Mapping[str, Mapping[str, float | None]] | None = None  # lobe -> LOBE_MEASURES keys
    sr_uids: tuple[str, str, str] | None = None        # (study, series, SOP) of its SR
    seg_uids: tuple[str, str] | None = None            # (series, SOP) of its SEG

    def __post_init__(self) -> None:
        if self.acquired_at.tzinfo is None:
            raise ValueError("CourseScan.acquired_at must be timezone-aware")


def scan_from_measurements(document: Mapping, *, study_uid: str, series_uid: str,
                           acquired_at: datetime, sr_uids=None, seg_uids=None) -> CourseScan:
    """A CourseScan from a measurements.json document (quant.measurements keys)."""
    values = {key: _number(document.get(key)) for key in WHOLE_LUNG_MEASURES}
    lobes = None
    if document.get("lobes"):
        lobes = {name: {key: _number(lobe.get(key)) for key in LOBE_MEASURES}
                 for name, lobe in document["lobes"].items()}
    return CourseScan(study_uid=study_uid, series_uid=series_uid, acquired_at=acquired_at,
                      values=values, lobes=lobes,
                      sr_uids=tuple(sr_uids) if sr_uids else None,
                      seg_uids=tuple(seg_uids) if seg_uids else None)


def _number(value) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class CoursePoint:
    """A measure at one scan, with its change since the scan before it."""

    value: float | None
    change: float | None                 # value - prior value
    relative_change_pct: float | None    # 100 * change / prior value
    days_since_prior: float | None


@dataclass(frozen=True)
class MeasureCourse:
    key: str
    unit: str
    label: str
    lobe: str | None
    points: tuple[CoursePoint, ...]       # one per scan, in Course.scans order


@dataclass(frozen=True)
class Course:
    scans: tuple[CourseScan, ...]         # acquisition order
    current_index: int
    measures: tuple[MeasureCourse, ...]   # whole lung first, then per lobe
    trend: str | None                     # of the lesion volume, None without a prior
    ggo_trend: str | None
    consolidation_trend: str | None
    summary: str
    stable_band: dict = field(default_factory=dict)

    @property
    def current(self) -> CourseScan:
        return self.scans[self.current_index]

    @property
    def prior(self) -> CourseScan | None:
        return self.scans[self.current_index - 1] if self.current_index > 0 else None

    @property
    def days_since_prior(self) -> float | None:
        prior = self.prior
        return None if prior is None else _days(prior.acquired_at, self.current.acquired_at)

    def measure(self, key: str, lobe: str | None = None) -> MeasureCourse:
        for m in self.measures:
            if m.key == key and m.lobe == lobe:
                return m
        raise KeyError((key, lobe))

    def since_prior(self, key: str, lobe: str | None = None) -> CoursePoint:
        return self.measure(key, lobe).points[self.current_index]

    def to_json_dict(self) -> dict:
        """The ``course`` object of measurements.json."""
        def point(p: CoursePoint) -> dict:
            return {"value": p.value, "change": p.change,
                    "relative_change_pct": p.relative_change_pct,
                    "days_since_prior": p.days_since_prior}

        prior = self.prior
        whole = {m.key: {"unit": m.unit, "points": [point(p) for p in m.points]}
                 for m in self.measures if m.lobe is None}
        lobes: dict = {}
        for m in self.measures:
            if m.lobe is not None:
                lobes.setdefault(m.lobe, {})[m.key] = {
                    "unit": m.unit, "points": [point(p) for p in m.points]}
        return {
            "scans": [{"study_instance_uid": s.study_uid, "series_instance_uid": s.series_uid,
                       "acquired_at": s.acquired_at.isoformat(),
                       "sr_sop_instance_uid": s.sr_uids[2] if s.sr_uids else None,
                       "seg_sop_instance_uid": s.seg_uids[1] if s.seg_uids else None}
                      for s in self.scans],
            "current_index": self.current_index,
            "prior_study_instance_uid": prior.study_uid if prior else None,
            "days_since_prior": self.days_since_prior,
            "trend": self.trend,
            "ggo_trend": self.ggo_trend,
            "consolidation_trend": self.consolidation_trend,
            "summary": self.summary,
            "stable_band": self.stable_band,
            "measures": whole,
            "lobes": lobes,
        }


def _days(earlier: datetime, later: datetime) -> float:
    return (later - earlier).total_seconds() / 86400.0


def order_scans(current: CourseScan, earlier: Sequence[CourseScan]) -> tuple[list[CourseScan], int]:
    """The patient's scans, one per study, in acquisition order, and the current one's index.

    ``earlier`` are the stored analyses in the order they were recorded; the current study's
    own earlier analyses are replaced by ``current``."""
    by_study: dict[str, CourseScan] = {}
    for scan in earlier:
        if scan.study_uid != current.study_uid:
            by_study[scan.study_uid] = scan       # a later record of a study replaces it
    by_study[current.study_uid] = current
    scans = sorted(by_study.values(), key=lambda s: (s.acquired_at, s.study_uid))
    return scans, scans.index(current)


def _points(values: list[float | None], scans: list[CourseScan]) -> tuple[CoursePoint, ...]:
    points = []
    for i, value in enumerate(values):
        if i == 0:
            points.append(CoursePoint(value, None, None, None))
            continue
        prior = values[i - 1]
        days = _days(scans[i - 1].acquired_at, scans[i].acquired_at)
        change = None if value is None or prior is None else value - prior
        relative = None if change is None or not prior else 100.0 * change / prior
        points.append(CoursePoint(value, change, relative, days))
    return tuple(points)


def classify_change(prior_ml: float | None, current_ml: float | None, *,
                    stable_relative_pct: float = DEFAULT_STABLE_RELATIVE_PCT,
                    stable_absolute_ml: float = DEFAULT_STABLE_ABSOLUTE_ML) -> str | None:
    """progression / stable / absorption of a volume between two scans (None if unknown)."""
    if prior_ml is None or current_ml is None:
        return None
    band = max(stable_relative_pct / 100.0 * prior_ml, stable_absolute_ml)
    change = current_ml - prior_ml
    if change > band:
        return PROGRESSION
    if change < -band:
        return ABSORPTION
    return STABLE


def build_course(current: CourseScan, earlier: Sequence[CourseScan], *,
                 stable_relative_pct: float = DEFAULT_STABLE_RELATIVE_PCT,
                 stable_absolute_ml: float = DEFAULT_STABLE_ABSOLUTE_ML) -> Course:
    """The course of ``current``'s patient given the patient's ``earlier`` stored scans."""
    scans, index = order_scans(current, earlier)
    measures = [MeasureCourse(key, unit, label, None,
                              _points([s.values.get(key) for s in scans], scans))
                for key, (unit, label) in WHOLE_LUNG_MEASURES.items()]
    lobe_names: list[str] = []
    for s in scans:
        for name in (s.lobes or {}):
            if name not in lobe_names:
                lobe_names.append(name)
    for name in lobe_names:
        for key, (unit, label) in LOBE_MEASURES.items():
            values = [(s.lobes or {}).get(name, {}).get(key) for s in scans]
            measures.append(MeasureCourse(key, unit, label, name, _points(values, scans)))
    band = {"stable_relative_pct": stable_relative_pct, "stable_absolute_ml": stable_absolute_ml}
    trends: dict[str, str | None] = {"lesion": None, "ggo": None, "consolidation": None}
    if index > 0:
        prior = scans[index - 1]
        for name in trends:
            key = f"{name}_volume_ml"
            trends[name] = classify_change(prior.values.get(key), current.values.get(key), **band)
    course = Course(scans=tuple(scans), current_index=index, measures=tuple(measures),
                    trend=trends["lesion"], ggo_trend=trends["ggo"],
                    consolidation_trend=trends["consolidation"], summary="", stable_band=band)
    return replace(course, summary=summarize(course))


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("score", "lobes"):
        return f"{value:g}"
    return f"{value:.1f} {unit}" if unit == "ml" else f"{value:.1f}{unit}"


def _change(point: CoursePoint, unit: str) -> str:
    if point.change is None:
        return "change n/a"
    sign = "+" if point.change >= 0 else "-"
    text = f"{sign}{_fmt(abs(point.change), unit)}"
    if point.relative_change_pct is not None and unit not in ("score", "lobes"):
        text += f", {point.relative_change_pct:+.0f}%"
    return text


_VERB = {PROGRESSION: "progressing", STABLE: "stable", ABSORPTION: "absorbing"}


def summarize(course: Course) -> str:
    """A short plain-language summary of the change since the prior scan."""
    prior = course.prior
    n = len(course.scans)
    if prior is None:
        if n == 1:
            return "First analysed scan of this patient: no prior to compare with."
        return (f"Earliest of {n} analysed scans of this patient (the others were acquired "
                "later): no prior to compare with.")
    days = course.days_since_prior
    lesion = course.since_prior("lesion_volume_ml")
    pct = course.since_prior("lesion_pct")
    parts = [
        f"Compared with the prior scan of {prior.acquired_at.date().isoformat()} "
        f"({days:.0f} days earlier; scan {course.current_index + 1} of {n}): "
        f"{course.trend or 'change unknown'}.",
        f"Lesions {_fmt(prior.values.get('lesion_volume_ml'), 'ml')} -> "
        f"{_fmt(lesion.value, 'ml')} ({_change(lesion, 'ml')}), "
        f"{_fmt(prior.values.get('lesion_pct'), '%')} -> {_fmt(pct.value, '%')} of the lung.",
    ]
    ggo, cons = course.since_prior("ggo_volume_ml"), course.since_prior("consolidation_volume_ml")
    parts.append(f"GGO {_VERB.get(course.ggo_trend, 'unknown')} ({_change(ggo, 'ml')}), "
                 f"consolidation {_VERB.get(course.consolidation_trend, 'unknown')} "
                 f"({_change(cons, 'ml')}).")
    if (course.ggo_trend and course.consolidation_trend
            and course.ggo_trend != course.consolidation_trend):
        parts.append("GGO and consolidation are moving differently"
                     + (" (GGO turning into consolidation?)." if course.ggo_trend == ABSORPTION
                        and course.consolidation_trend == PROGRESSION else "."))
    score = course.since_prior("ct_score")
    if score.value is not None and score.change is not None:
        parts.append(f"CT score {score.value - score.change:g} -> {score.value:g}.")
    return " ".join(parts)
