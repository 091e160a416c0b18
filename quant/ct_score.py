"""Severity scores from lesion percentages.

Lobe score (0-5), on the lesion percentage p of a lobe, with exact band edges:
    0: p == 0 (after the involvement floor: p < floor counts as 0)
    1: 0 < p < 5
    2: 5 <= p <= 25
    3: 25 < p < 50
    4: 50 <= p <= 75
    5: p > 75
(The reference study's "26-49%" band is read as 25 < p < 50 so that every real p has one band.)

CT-score equivalent: the study's quadratic fit of whole-lung lesion percent against the 0-25
CT score, percent = -0.27 + 0.37 s + 0.13 s^2, solved for s >= 0. No lesion (p <= 0) gives 0:
the scoring system defines score 0 as 0% involvement, and the fit's negative intercept would
otherwise give 0.65 to a clear lung. Results are clamped to 0..25 (p >= 90.28 gives 25).
"""

from __future__ import annotations

import math
from typing import Iterable

FIT_A, FIT_B, FIT_C = 0.13, 0.37, -0.27


def lobe_score(lesion_pct: float, floor_pct: float = 0.0) -> int:
    """0-5 score of one lobe from its lesion percentage (see the module docstring)."""
    p = float(lesion_pct)
    if math.isnan(p) or p < 0 or p > 100 + 1e-9:
        raise ValueError(f"lesion percentage must be within 0..100, got {lesion_pct}")
    if p == 0 or p < floor_pct:
        return 0
    if p < 5:
        return 1
    if p <= 25:
        return 2
    if p < 50:
        return 3
    if p <= 75:
        return 4
    return 5


def fit_percent(score: float) -> float:
    """The study's fit: lesion percent for a CT score s."""
    return FIT_C + FIT_B * score + FIT_A * score * score


def ct_score_equivalent(lesion_pct: float) -> float:
    """CT score 0..25 whose fitted percent equals ``lesion_pct`` (clamped; see docstring)."""
    p = float(lesion_pct)
    if math.isnan(p):
        raise ValueError("lesion percentage is NaN")
    if p <= 0:
        return 0.0
    # FIT_A s^2 + FIT_B s + (FIT_C - p) = 0, positive root
    disc = FIT_B * FIT_B - 4 * FIT_A * (FIT_C - p)
    if disc <= 0:
        return 0.0
    s = (-FIT_B + math.sqrt(disc)) / (2 * FIT_A)
    return float(min(25.0, max(0.0, s)))


def involved_lobes(lobe_pcts: Iterable[float], floor_pct: float) -> int:
    """Number of lobes whose lesion percentage is at least ``floor_pct`` (and above 0)."""
    return sum(1 for p in lobe_pcts if p > 0 and p >= floor_pct)
