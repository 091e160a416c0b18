"""Numbers as a radiologist reads them, one rule for every output (SR, PDF, summary).

* volumes (ml): 1 ml from 100 ml up, 0.1 ml below (4012.5 -> 4013; 12.34 -> 12.3);
* percents: 0.1 % (7.51 -> 7.5);
* scores and counts: integers (CT severity score 0-25, its equivalent, lobe score, lobes);
* dimensionless indices (Hellinger distance, IoU): 0.01.

Halves round away from zero (the way people round), not to even.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

Kind = Literal["ml", "percent", "score", "index"]


def _round(value: float, decimals: int) -> float:
    quantum = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))


def decimals_for(kind: Kind, value: float) -> int:
    if kind == "ml":
        return 0 if abs(value) >= 100 else 1
    if kind == "percent":
        return 1
    if kind == "score":
        return 0
    if kind == "index":
        return 2
    raise ValueError(f"unknown kind of number {kind!r}")


def rounded(kind: Kind, value: float) -> float | int:
    """``value`` rounded for ``kind``; scores come back as int."""
    decimals = decimals_for(kind, value)
    out = _round(value, decimals)
    return int(out) if decimals == 0 and kind == "score" else out


def formatted(kind: Kind, value: float | None, *, unit: bool = True) -> str:
    """The text of ``value`` as shown in the report ("-" when not computed)."""
    if value is None:
        return "-"
    decimals = decimals_for(kind, value)
    text = f"{_round(value, decimals):.{decimals}f}"
    if unit and kind == "ml":
        return f"{text} ml"
    if unit and kind == "percent":
        return f"{text} %"
    return text
