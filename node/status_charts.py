"""The status page's charts as PNG bytes, drawn server-side with matplotlib (no JavaScript).

Plain data in (lists of numbers and UTC datetimes), PNG bytes out. Uses matplotlib's object
API (Figure + Agg canvas, never pyplot), so charts can be drawn from several request
threads at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from io import BytesIO
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, DateFormatter
from matplotlib.figure import Figure

SIZE_IN = (6.0, 2.6)
DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _hours(now: datetime) -> list[datetime]:
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return [end - timedelta(hours=24 - h) for h in range(24)]


def throughput_chart(done: Sequence[datetime], failed: Sequence[datetime],
                     delivered: Sequence[datetime], now: datetime) -> bytes:
    """Jobs done and failed and files delivered per hour over the last 24 hours."""
    hours = _hours(now)
    def per_hour(times: Sequence[datetime]) -> list[int]:
        return [sum(1 for t in times if start <= t < start + timedelta(hours=1)) for start in hours]

    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    ax = fig.add_subplot()
    width = timedelta(minutes=18)
    ax.bar([h + timedelta(minutes=12) for h in hours], per_hour(done), width=width,
           color="#2e7d32", label="series analysed")
    ax.bar([h + timedelta(minutes=30) for h in hours], per_hour(failed), width=width,
           color="#c62828", label="failed")
    ax.bar([h + timedelta(minutes=48) for h in hours], per_hour(delivered), width=width,
           color="#1565c0", label="files delivered")
    ax.set_xlim(hours[0], hours[-1] + timedelta(hours=1))
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=timezone.utc))
    ax.set_ylabel("per hour")
    ax.set_title("Throughput, last 24 h (UTC)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def latency_chart(points: Sequence[tuple[datetime, float, float]], now: datetime) -> bytes:
    """Per job finished in the last 24 hours: (finished at, seconds from queued to done,
    seconds of analysis)."""
    hours = _hours(now)
    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    ax = fig.add_subplot()
    if points:
        when = [p[0] for p in points]
        ax.plot(when, [p[1] for p in points], "o-", color="#6a1b9a", markersize=4,
                label="queued to done")
        ax.plot(when, [p[2] for p in points], "s--", color="#ef6c00", markersize=3,
                label="analysis")
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no job finished in the last 24 h", ha="center", va="center",
                transform=ax.transAxes, color="#666")
    ax.set_xlim(hours[0], hours[-1] + timedelta(hours=1))
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=timezone.utc))
    ax.set_ylabel("seconds")
    ax.set_title("Latency per series, last 24 h (UTC)", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def course_chart(dates: Sequence[datetime], series: dict[str, Sequence[float | None]],
                 *, current: int | None = None, title: str = "Course") -> bytes:
    """Lesion, GGO and consolidation volumes (ml) at each scan of one patient."""
    fig = Figure(figsize=SIZE_IN, dpi=DPI)
    ax = fig.add_subplot()
    colours = {"lesions": "#37474f", "GGO": "#f9a825", "consolidation": "#d84315"}
    for name, values in series.items():
        xs = [d for d, v in zip(dates, values) if v is not None]
        ys = [v for v in values if v is not None]
        ax.plot(xs, ys, "o-", label=name, color=colours.get(name), linewidth=2)
    if current is not None and 0 <= current < len(dates):
        ax.axvline(dates[current], color="#90a4ae", linestyle=":", linewidth=1)
    ax.set_ylabel("ml")
    ax.set_ylim(bottom=0)
    if len(dates) <= 8:                    # a tick at each scan
        ax.set_xticks(list(dates))
    else:
        ax.xaxis.set_major_locator(AutoDateLocator(maxticks=8, tz=timezone.utc))
    ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d", tz=timezone.utc))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)
