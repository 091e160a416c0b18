"""Cohort statistics of serial chest CT, as in the study lungnode follows (``lungnode cohort``).

Input: one row per scan with the columns ``patient_id, group, days_from_onset, ct_score,
lesion_pct, ggo_pct, consolidation_pct`` (a pandas DataFrame; :func:`read_cohort_csv`
validates a CSV into one). Everything here is pure: tables in, tables out; the statistics are
scipy's and statsmodels' (never hand-written):

* :func:`time_point_table`: median and IQR (25th-75th percentile) of each measure per group
  and time point. The time points follow the study: ``admission`` is each patient's first
  scan; ``1 week`` and ``2 weeks`` are the scan closest to 7 and 14 days after it, within
  TIME_POINT_WINDOWS (a patient without a scan in a window is not counted there; one scan
  never counts at two time points).
* :func:`group_comparison_table`: two-sided Mann-Whitney U between every pair of groups for
  each measure and time point (scipy.stats.mannwhitneyu).
* :func:`correlation_table`: Spearman's rho between CT score and percent of lesions, over all
  scans and per group (scipy.stats.spearmanr).
* :func:`score_fit_table`: CT score against percent of lesions, linear vs quadratic least
  squares with intercept (statsmodels OLS): coefficients, r^2, adjusted r^2, AIC.
* :func:`fit_course_curves`: the study's cubic without intercept, y = b1 x + b2 x^2 + b3 x^3,
  of each measure against days from onset, per group (statsmodels OLS, no constant), with
  the day of its peak (:func:`cubic_peak_day`).

r^2 of the no-intercept cubic: statsmodels reports the *uncentered* r^2 for a model without
a constant (1 - SSR / sum y^2), which is high for any positive measure; ``r2`` in curves.csv
is the usual centered one (1 - SSR / sum (y - mean y)^2), which says how much of the
variation around the mean the curve explains; ``r2_uncentered`` is in curve_details.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

REQUIRED_COLUMNS = (
    "patient_id", "group", "days_from_onset", "ct_score", "lesion_pct", "ggo_pct",
    "consolidation_pct",
)
MEASURES = ("ct_score", "lesion_pct", "ggo_pct", "consolidation_pct")
MEASURE_LABELS = {
    "ct_score": "CT score (0-25)",
    "lesion_pct": "Lesions (% of lung)",
    "ggo_pct": "GGO (% of lung)",
    "consolidation_pct": "Consolidation (% of lung)",
}
# time point -> (target days after the first scan, window [lo, hi] in days)
TIME_POINT_WINDOWS: dict[str, tuple[float, float, float]] = {
    "admission": (0.0, 0.0, 0.0),
    "1 week": (7.0, 4.0, 10.0),
    "2 weeks": (14.0, 11.0, 17.0),
}
CURVE_COLUMNS = ("group", "measure", "b1", "b2", "b3", "r2", "peak_day")  # a contract


class CohortError(ValueError):
    """The cohort table cannot be analysed; the message says which column or row."""


def read_cohort_csv(path: Path) -> pd.DataFrame:
    """Read and validate a cohort CSV (extra columns are kept, blank measures are NaN)."""
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str, "group": str})
    except FileNotFoundError as exc:
        raise CohortError(f"{path}: no such file") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CohortError(f"{path}: not a readable CSV ({exc})") from exc
    return validate_cohort(frame, source=str(path))


def validate_cohort(frame: pd.DataFrame, source: str = "cohort") -> pd.DataFrame:
    frame = frame.rename(columns=lambda c: str(c).strip())
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CohortError(f"{source}: missing column(s) {', '.join(missing)} "
                          f"(needs {', '.join(REQUIRED_COLUMNS)})")
    frame = frame.copy()
    for column in ("patient_id", "group"):
        blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if blank.any():
            rows = ", ".join(str(i + 2) for i in frame.index[blank][:5])
            raise CohortError(f"{source}: column {column} is empty on line(s) {rows}")
        frame[column] = frame[column].astype(str).str.strip()
    for column in ("days_from_onset", *MEASURES):
        numeric = pd.to_numeric(frame[column], errors="coerce")
        bad = numeric.isna() & frame[column].notna() & (frame[column].astype(str).str.strip() != "")
        if bad.any():
            line = int(frame.index[bad][0]) + 2
            raise CohortError(f"{source}: column {column} is not a number on line {line}: "
                              f"{frame[column][bad].iloc[0]!r}")
        frame[column] = numeric.astype(float)
    if frame["days_from_onset"].isna().any():
        line = int(frame.index[frame["days_from_onset"].isna()][0]) + 2
        raise CohortError(f"{source}: days_from_onset is empty on line {line}")
    if frame.empty:
        raise CohortError(f"{source}: no rows")
    return frame


# --- time points --------------------------------------------------------------------------


def assign_time_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that fall on a time point, with a ``time_point`` column (see module doc)."""
    picked = []
    for _, scans in frame.groupby("patient_id", sort=False):
        scans = scans.sort_values("days_from_onset")
        first = scans["days_from_onset"].iloc[0]
        since = scans["days_from_onset"] - first
        used: set = set()
        for name, (target, lo, hi) in TIME_POINT_WINDOWS.items():
            window = since[(since >= lo) & (since <= hi) & ~since.index.isin(list(used))]
            if window.empty:
                continue
            index = (window - target).abs().idxmin()
            used.add(index)
            picked.append(scans.loc[[index]].assign(time_point=name))
    if not picked:
        return frame.iloc[0:0].assign(time_point=pd.Series(dtype=str))
    return pd.concat(picked, ignore_index=True)


def time_point_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Median and IQR of each measure per group and time point."""
    points = assign_time_points(frame)
    rows = []
    for (group, time_point), part in points.groupby(["group", "time_point"], sort=False):
        for measure in MEASURES:
            values = part[measure].dropna().to_numpy()
            q1, median, q3 = (np.percentile(values, [25, 50, 75]) if values.size
                              else (math.nan,) * 3)
            rows.append({"group": group, "time_point": time_point, "measure": measure,
                         "n": int(values.size), "median": median, "q1": q1, "q3": q3})
    table = pd.DataFrame(rows, columns=["group", "time_point", "measure", "n", "median", "q1",
                                        "q3"])
    order = {name: i for i, name in enumerate(TIME_POINT_WINDOWS)}
    return table.sort_values(["measure", "time_point", "group"],
                             key=lambda s: s.map(order) if s.name == "time_point" else s,
                             ignore_index=True)


def group_comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Two-sided Mann-Whitney U between each pair of groups, per time point and measure."""
    points = assign_time_points(frame)
    groups = sorted(frame["group"].unique())
    rows = []
    for time_point in TIME_POINT_WINDOWS:
        at = points[points["time_point"] == time_point]
        for measure in MEASURES:
            for a, b in itertools.combinations(groups, 2):
                x = at.loc[at["group"] == a, measure].dropna().to_numpy()
                y = at.loc[at["group"] == b, measure].dropna().to_numpy()
                u = p = math.nan
                if x.size and y.size:
                    result = stats.mannwhitneyu(x, y, alternative="two-sided")
                    u, p = float(result.statistic), float(result.pvalue)
                rows.append({"time_point": time_point, "measure": measure, "group_a": a,
                             "group_b": b, "n_a": int(x.size), "n_b": int(y.size),
                             "median_a": float(np.median(x)) if x.size else math.nan,
                             "median_b": float(np.median(y)) if y.size else math.nan,
                             "u": u, "p_value": p})
    return pd.DataFrame(rows, columns=["time_point", "measure", "group_a", "group_b", "n_a",
                                       "n_b", "median_a", "median_b", "u", "p_value"])


def correlation_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman's rho between CT score and percent of lesions, all scans and per group."""
    rows = []
    parts = [("all", frame)] + [(g, frame[frame["group"] == g]) for g in sorted(frame["group"].unique())]
    for name, part in parts:
        pair = part[["ct_score", "lesion_pct"]].dropna()
        rho = p = math.nan
        if len(pair) >= 3 and pair["ct_score"].nunique() > 1 and pair["lesion_pct"].nunique() > 1:
            result = stats.spearmanr(pair["ct_score"], pair["lesion_pct"])
            rho, p = float(result.statistic), float(result.pvalue)
        rows.append({"group": name, "x": "ct_score", "y": "lesion_pct", "n": len(pair),
                     "spearman_rho": rho, "p_value": p})
    return pd.DataFrame(rows)


def score_fit_table(frame: pd.DataFrame) -> pd.DataFrame:
    """CT score = a + b x (+ c x^2), x = percent of lesions: linear vs quadratic (OLS)."""
    pair = frame[["ct_score", "lesion_pct"]].dropna()
    rows = []
    x, y = pair["lesion_pct"].to_numpy(), pair["ct_score"].to_numpy()
    for model, degree in (("linear", 1), ("quadratic", 2)):
        row = {"model": model, "n": len(pair), "intercept": math.nan, "b1": math.nan,
               "b2": math.nan, "r2": math.nan, "r2_adjusted": math.nan, "aic": math.nan}
        if len(pair) > degree + 1:
            design = sm.add_constant(np.column_stack([x ** k for k in range(1, degree + 1)]),
                                     has_constant="add")
            fit = sm.OLS(y, design).fit()
            row.update(intercept=fit.params[0], b1=fit.params[1],
                       b2=fit.params[2] if degree == 2 else math.nan, r2=fit.rsquared,
                       r2_adjusted=fit.rsquared_adj, aic=fit.aic)
        rows.append(row)
    return pd.DataFrame(rows)


# --- the cubic course curves ------------------------------------------------------------


@dataclass(frozen=True)
class CubicCurve:
    group: str
    measure: str
    b1: float
    b2: float
    b3: float
    r2: float
    r2_uncentered: float
    n: int
    peak_day: float | None
    day_range: tuple[float, float]

    def __call__(self, days):
        x = np.asarray(days, dtype=float)
        return self.b1 * x + self.b2 * x ** 2 + self.b3 * x ** 3


def cubic_peak_day(b1: float, b2: float, b3: float,
                   day_range: tuple[float, float] = (0.0, 60.0)) -> float | None:
    """Day of the local maximum of y = b1 x + b2 x^2 + b3 x^3 inside ``day_range``.

    The stationary points are the real roots of dy/dx = b1 + 2 b2 x + 3 b3 x^2; the peak is
    the one where d2y/dx2 = 2 b2 + 6 b3 x < 0. None when the curve has no maximum in range
    (it rises or falls throughout: no peak was observed)."""
    derivative = np.polynomial.Polynomial([b1, 2 * b2, 3 * b3])
    if derivative.degree() < 1 or not np.any(derivative.coef[1:]):
        return None
    lo, hi = day_range
    for root in sorted(derivative.roots()):
        if abs(root.imag) > 1e-9:
            continue
        x = float(root.real)
        if lo <= x <= hi and 2 * b2 + 6 * b3 * x < 0:
            return x
    return None


def fit_cubic(days: np.ndarray, values: np.ndarray, *, group: str = "", measure: str = "",
              peak_range: tuple[float, float] | None = None) -> CubicCurve:
    """Least-squares y = b1 x + b2 x^2 + b3 x^3 (no intercept; statsmodels OLS)."""
    days = np.asarray(days, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(days) & np.isfinite(values)
    days, values = days[keep], values[keep]
    if days.size < 4:
        raise CohortError(f"{group}/{measure}: {days.size} scans, the cubic needs at least 4")
    design = np.column_stack([days, days ** 2, days ** 3])
    fit = sm.OLS(values, design, hasconst=False).fit()
    b1, b2, b3 = (float(v) for v in fit.params)
    total = float(np.sum((values - values.mean()) ** 2))
    r2 = 1.0 - float(fit.ssr) / total if total > 0 else math.nan
    day_range = (float(days.min()), float(days.max()))
    peak = cubic_peak_day(b1, b2, b3, peak_range or (max(0.0, day_range[0]), day_range[1]))
    return CubicCurve(group=group, measure=measure, b1=b1, b2=b2, b3=b3, r2=r2,
                      r2_uncentered=float(fit.rsquared), n=int(days.size), peak_day=peak,
                      day_range=day_range)


def fit_course_curves(frame: pd.DataFrame) -> list[CubicCurve]:
    """The cubic of each measure against days from onset, for each group (>= 4 scans)."""
    curves = []
    for group in sorted(frame["group"].unique()):
        part = frame[frame["group"] == group]
        for measure in MEASURES:
            pair = part[["days_from_onset", measure]].dropna()
            if len(pair) < 4:
                continue
            curves.append(fit_cubic(pair["days_from_onset"].to_numpy(), pair[measure].to_numpy(),
                                    group=group, measure=measure))
    return curves


def curves_table(curves: list[CubicCurve]) -> pd.DataFrame:
    """curves.csv: exactly CURVE_COLUMNS (peak_day empty when there is no peak in range)."""
    return pd.DataFrame([{"group": c.group, "measure": c.measure, "b1": c.b1, "b2": c.b2,
                          "b3": c.b3, "r2": c.r2, "peak_day": c.peak_day} for c in curves],
                        columns=list(CURVE_COLUMNS))


def curve_details_table(curves: list[CubicCurve]) -> pd.DataFrame:
    return pd.DataFrame([{"group": c.group, "measure": c.measure, "n": c.n, "b1": c.b1,
                          "b2": c.b2, "b3": c.b3, "r2": c.r2, "r2_uncentered": c.r2_uncentered,
                          "peak_day": c.peak_day, "first_day": c.day_range[0],
                          "last_day": c.day_range[1]} for c in curves])
