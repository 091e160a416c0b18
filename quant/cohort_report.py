"""Write the cohort analysis (quant.cohort) as CSV, Markdown and PNG files into one folder.

Files (``lungnode cohort analyze --in FILE.csv --out DIR``):

* ``curves.csv``: group, measure, b1, b2, b3, r2, peak_day (a contract: scripts read it);
* ``curve_details.csv``: the same with n, uncentered r^2 and the day range fitted;
* ``time_points.csv``: median, q1, q3 (IQR) and n per group, time point and measure;
* ``group_comparison.csv``: Mann-Whitney U and p between groups per time point and measure;
* ``correlation.csv``: Spearman's rho between CT score and percent of lesions;
* ``score_fit.csv``: CT score vs percent of lesions, linear vs quadratic;
* ``report.md``: all of the above as Markdown tables;
* ``curve_<measure>.png``: scans and fitted cubic per group with the peak marked.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from quant.cohort import (  # noqa: E402
    MEASURE_LABELS,
    MEASURES,
    CubicCurve,
    correlation_table,
    curve_details_table,
    curves_table,
    fit_course_curves,
    group_comparison_table,
    score_fit_table,
    time_point_table,
)


def analyze_cohort(frame: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Run every analysis on a validated cohort frame and write its files; return them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = fit_course_curves(frame)
    tables = {
        "curves": curves_table(curves),
        "curve_details": curve_details_table(curves),
        "time_points": time_point_table(frame),
        "group_comparison": group_comparison_table(frame),
        "correlation": correlation_table(frame),
        "score_fit": score_fit_table(frame),
    }
    written: dict[str, Path] = {}
    for name, table in tables.items():
        path = out_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        written[name] = path
    written["report"] = _write_markdown(out_dir / "report.md", frame, tables)
    for measure in MEASURES:
        mine = [c for c in curves if c.measure == measure]
        if mine:
            path = out_dir / f"curve_{measure}.png"
            plot_curves(frame, mine, measure, path)
            written[f"curve_{measure}"] = path
    return written


def _write_markdown(path: Path, frame: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> Path:
    groups = ", ".join(f"{g} ({n} patients, {m} scans)" for g, n, m in (
        (g, part["patient_id"].nunique(), len(part)) for g, part in frame.groupby("group")))
    sections = [
        "# Cohort analysis (lungnode cohort analyze)",
        "",
        f"{frame['patient_id'].nunique()} patients, {len(frame)} scans: {groups}.",
        "",
    ]
    titles = {
        "curves": "Course curves y = b1 x + b2 x^2 + b3 x^3 (x: days from onset)",
        "time_points": "Median and IQR per group and time point",
        "group_comparison": "Mann-Whitney U between groups",
        "correlation": "Spearman correlation: CT score vs percent of lesions",
        "score_fit": "CT score vs percent of lesions: linear vs quadratic",
        "curve_details": "Curve fits in detail",
    }
    for name, title in titles.items():
        sections += [f"## {title}", "", tables[name].to_markdown(index=False, floatfmt=".4g"), ""]
    sections += [f"![{m}](curve_{m}.png)" for m in MEASURES]
    path.write_text("\n".join(sections) + "\n", encoding="utf-8")
    return path


def plot_curves(frame: pd.DataFrame, curves: list[CubicCurve], measure: str, path: Path,
                *, title: str | None = None) -> Path:
    """Scatter of the scans and the fitted cubic per group, peak marked, as a PNG."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for i, curve in enumerate(curves):
        colour = f"C{i}"
        part = frame[frame["group"] == curve.group]
        ax.scatter(part["days_from_onset"], part[measure], s=8, alpha=0.35, color=colour)
        days = np.linspace(0.0, curve.day_range[1], 200)
        label = f"{curve.group} (r² {curve.r2:.2f})"
        ax.plot(days, curve(days), color=colour, label=label)
        if curve.peak_day is not None:
            ax.axvline(curve.peak_day, color=colour, linestyle=":", linewidth=1)
            ax.annotate(f"peak day {curve.peak_day:.1f}", (curve.peak_day, float(curve(curve.peak_day))),
                        textcoords="offset points", xytext=(4, 4), color=colour, fontsize=8)
    ax.set_xlabel("Days from symptom onset")
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.set_title(title or f"{MEASURE_LABELS.get(measure, measure)} over the course")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
