"""Pictures of an analysis (no DICOM here): the one-page report and the overlay slices.

* ``overlay_rgb`` colours one axial slice: lung window (W 1500 / L -600), GGO yellow,
  consolidation red (both half transparent, so the parenchyma stays readable) and the lobe
  borders as thin lines in each lobe's colour.
* ``render_report`` draws the one-page report (matplotlib, Agg, no display needed): the
  volumes and percents, CT score and its equivalent, the per-lobe table, the quality flags and
  three key slices with the lesions coloured. It returns both the PDF bytes and the same page
  as an RGB array (the summary secondary capture).

Every number goes through node.outputs.rounding, the rule the SR uses too. Images are shown
in the radiological convention the canonical LPS array already has (patient's left on the
right of the image, anterior at the top).
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass

import numpy as np

from node.outputs.codes import LESIONS, LOBES
from node.outputs.rounding import formatted
from quant.measurements import Measurements

WINDOW_CENTER, WINDOW_WIDTH = -600.0, 1500.0
GGO_RGB = LESIONS.segments[0].rgb            # yellow
CONSOLIDATION_RGB = LESIONS.segments[1].rgb  # red
LESION_ALPHA = 0.55
PAGE_INCHES = (8.27, 11.69)                  # A4 portrait
SUMMARY_DPI = 110                            # 910 x 1286 pixels


def window(hu: np.ndarray) -> np.ndarray:
    """HU -> 0..255 grey in the lung window."""
    low = WINDOW_CENTER - WINDOW_WIDTH / 2
    grey = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / WINDOW_WIDTH)
    return np.clip(grey, 0, 255).astype(np.uint8)


def lobe_borders(lobes: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D lobe label map whose right or lower neighbour has another label
    (0 included, so the lung outline is drawn too); the value is the lobe label."""
    border = np.zeros(lobes.shape, dtype=lobes.dtype)
    right = lobes[:, :-1] != lobes[:, 1:]
    down = lobes[:-1, :] != lobes[1:, :]
    border[:, :-1][right] = np.maximum(lobes[:, :-1], lobes[:, 1:])[right]
    border[:-1, :][down] = np.maximum(border[:-1, :], np.maximum(lobes[:-1, :], lobes[1:, :]))[down]
    return border


def blend(grey: np.ndarray, ggo: np.ndarray, consolidation: np.ndarray) -> np.ndarray:
    """The lesion colouring of ``overlay_rgb`` as float arithmetic, pixel by pixel: grey
    (uint8) to float RGB, GGO blended in, then consolidation over it, then clipped and
    truncated to uint8. The definition that ``_BLEND`` tabulates (and the test checks)."""
    rgb = np.repeat(np.asarray(grey).astype(np.float32)[..., None], 3, axis=-1)
    for mask, colour in ((ggo, GGO_RGB), (consolidation, CONSOLIDATION_RGB)):
        mask = np.asarray(mask, dtype=bool)
        rgb[mask] = (1 - LESION_ALPHA) * rgb[mask] + LESION_ALPHA * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _blend_table() -> np.ndarray:
    """(4, 256, 3) uint8: ``blend`` of every grey value for each of no lesion, GGO,
    consolidation and both (code = ggo + 2 * consolidation)."""
    grey = np.arange(256, dtype=np.uint8)
    return np.stack([blend(grey, np.full(256, code & 1, bool), np.full(256, code & 2, bool))
                     for code in range(4)])


_BLEND = _blend_table()
_LOBE_RGB = np.zeros((256, 3), np.uint8)         # lobe label -> its colour
_IS_LOBE = np.zeros(256, bool)                   # labels that have a colour
for _spec in LOBES.segments:
    _LOBE_RGB[_spec.number], _IS_LOBE[_spec.number] = _spec.rgb, True


def overlay_rgb(hu: np.ndarray, ggo: np.ndarray, consolidation: np.ndarray,
                lobes: np.ndarray | None = None) -> np.ndarray:
    """One axial slice (2-D arrays) as an RGB uint8 image (rows, columns, 3).

    Grey everywhere, then the lesion pixels looked up in ``_BLEND`` by (lesion code, grey
    value): equal to ``blend`` pixel for pixel and faster on a 512 x 512 slice
    (benchmarks/kernels.py); then the lobe borders in each lobe's colour."""
    grey = window(hu)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    code = np.asarray(ggo, dtype=np.uint8) | (np.asarray(consolidation, dtype=np.uint8) << 1)
    lesion = code != 0
    if lesion.any():
        rgb[lesion] = _BLEND[code[lesion], grey[lesion]]
    if lobes is not None:
        border = lobe_borders(np.asarray(lobes))
        on_border = border > 0
        if on_border.any():
            label = border[on_border]
            label = np.where(label < 256, label, 0).astype(np.intp)   # > 0 already
            coloured = _IS_LOBE[label]
            pixels = rgb[on_border]
            pixels[coloured] = _LOBE_RGB[label[coloured]]
            rgb[on_border] = pixels
    return rgb


def key_slices(lesion_per_slice: np.ndarray, lung_per_slice: np.ndarray, count: int = 3) -> list[int]:
    """``count`` slice indices to show: the ones with most lesion voxels, at least 10% of the
    lung's extent apart; without lesions, slices at 30/50/70% of the lung's extent."""
    lung_slices = np.flatnonzero(lung_per_slice > 0)
    if lung_slices.size == 0:
        n = len(lung_per_slice)
        return sorted({int(n * f) for f in (0.3, 0.5, 0.7)})[:count]
    first, last = int(lung_slices[0]), int(lung_slices[-1])
    gap = max(1, (last - first) // 10)
    chosen: list[int] = []
    for k in np.argsort(-lesion_per_slice, kind="stable"):
        if lesion_per_slice[k] <= 0 or len(chosen) == count:
            break
        if all(abs(int(k) - c) >= gap for c in chosen):
            chosen.append(int(k))
    for f in (0.5, 0.3, 0.7, 0.4, 0.6):
        if len(chosen) == count:
            break
        k = first + int(round(f * (last - first)))
        if all(abs(k - c) >= gap for c in chosen):
            chosen.append(k)
    return sorted(chosen)


@dataclass(frozen=True)
class ReportPage:
    pdf: bytes
    rgb: np.ndarray   # (rows, columns, 3) uint8, the same page


_LOBE_ROWS = (("right_upper", "Right upper"), ("right_middle", "Right middle"),
              ("right_lower", "Right lower"), ("left_upper", "Left upper"),
              ("left_lower", "Left lower"))


def _summary_rows(m: Measurements) -> list[tuple[str, str, str]]:
    return [
        ("Lungs", formatted("ml", m.lung_volume_ml), ""),
        ("Lesions (GGO + consolidation)", formatted("ml", m.lesion_volume_ml),
         formatted("percent", m.lesion_pct)),
        ("Ground glass opacity", formatted("ml", m.ggo_volume_ml), formatted("percent", m.ggo_pct)),
        ("Consolidation", formatted("ml", m.consolidation_volume_ml),
         formatted("percent", m.consolidation_pct)),
        ("CT severity score (0-25)", formatted("score", m.ct_score), ""),
        ("Score equivalent from lesion %", formatted("score", m.ct_score_equivalent), ""),
        ("Involved lobes", formatted("score", m.involved_lobes), ""),
        ("Hellinger distance to normal lung", formatted("index", m.hellinger_distance), ""),
    ]


def _lobe_rows(m: Measurements) -> list[tuple[str, ...]]:
    if m.lobes is None:
        return []
    rows = []
    for key, label in _LOBE_ROWS:
        lobe = m.lobes.get(key)
        if lobe is None:
            continue
        rows.append((label, formatted("ml", lobe.volume_ml), formatted("ml", lobe.lesion_volume_ml),
                     formatted("percent", lobe.lesion_pct), formatted("score", lobe.score),
                     lobe.confidence or "-"))
    return rows


TREND_COLOURS = {"lesions": "#37474f", "GGO": "#f9a825", "consolidation": "#d84315"}


def _draw_course(ax, course) -> None:
    """The patient's course (quant.course.Course): lesion, GGO and consolidation volumes at
    each scan, the current scan marked, the lesion trend in the title."""
    from matplotlib.dates import DateFormatter

    dates = [scan.acquired_at for scan in course.scans]
    for name, key in (("lesions", "lesion_volume_ml"), ("GGO", "ggo_volume_ml"),
                      ("consolidation", "consolidation_volume_ml")):
        points = [(d, scan.values.get(key)) for d, scan in zip(dates, course.scans)]
        points = [(d, v) for d, v in points if v is not None]
        if points:
            ax.plot([d for d, _ in points], [v for _, v in points], "o-", markersize=3,
                    linewidth=1.5, color=TREND_COLOURS[name], label=name)
    ax.axvline(dates[course.current_index], color="#90a4ae", linestyle=":", linewidth=1)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ml", fontsize=7)
    ax.set_xticks(dates if len(dates) <= 6 else dates[:: max(1, len(dates) // 6)])
    ax.xaxis.set_major_formatter(DateFormatter("%m-%d"))
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(f"Course over {len(course.scans)} scans\nlesions: {course.trend or 'n/a'} "
                 "since the prior (summary in the SR)", fontsize=7)


def render_report(m: Measurements, *, title: str, subtitle: str,
                  slices: list[tuple[str, np.ndarray]], course=None) -> ReportPage:
    """The one-page report. ``slices`` are (caption, RGB image) key slices (overlay_rgb).

    ``course`` (quant.course.Course) with more than one scan adds a trend chart of the
    patient's course in place of the last key slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PAGE_INCHES)
    FigureCanvasAgg(fig)
    fig.text(0.06, 0.965, title, fontsize=15, weight="bold", va="top")
    fig.text(0.06, 0.94, subtitle, fontsize=8.5, va="top", color="#333333")
    fig.text(0.06, 0.925, "Automated quantification, not verified by a physician. "
             "Not for diagnosis without review of the images.", fontsize=7.5, va="top",
             color="#aa0000")

    ax = fig.add_axes((0.06, 0.70, 0.88, 0.21))
    ax.axis("off")
    table = ax.table(cellText=_summary_rows(m), colLabels=("", "Volume / value", "% of lungs"),
                     loc="upper left", cellLoc="left", colWidths=(0.5, 0.25, 0.25))
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    table.scale(1, 1.25)

    lobe_rows = _lobe_rows(m)
    ax = fig.add_axes((0.06, 0.53, 0.88, 0.15))
    ax.axis("off")
    if lobe_rows:
        table = ax.table(cellText=lobe_rows, loc="upper left", cellLoc="left",
                         colLabels=("Lobe", "Volume", "Lesions", "% of lobe", "Score (0-5)",
                                    "Border confidence"),
                         colWidths=(0.2, 0.15, 0.15, 0.15, 0.15, 0.2))
        table.auto_set_font_size(False)
        table.set_fontsize(8.5)
        table.scale(1, 1.25)
    else:
        ax.text(0, 0.9, "Lobes: not available (see quality flags); no per-lobe score.",
                fontsize=9, va="top")

    fig.text(0.06, 0.515, f"Lesion engine: {m.engine}. GGO {m.ggo_min_hu:g} <= HU < "
             f"{m.consolidation_min_hu:g}, consolidation HU >= {m.consolidation_min_hu:g}, "
             "inside the lesion mask.", fontsize=7.5, va="top")
    flags = list(m.quality_flags) or ["none"]
    lines = textwrap.wrap("Quality flags: " + "; ".join(flags), 135)
    if len(lines) > 7:
        lines = lines[:6] + ["... (all flags are in the SR)"]
    fig.text(0.06, 0.495, "\n".join(lines), fontsize=7, va="top", linespacing=1.3)

    with_course = course is not None and len(course.scans) > 1
    if with_course and len(slices) > 2:
        slices = slices[:2]
    panels = len(slices) + (1 if with_course else 0)
    width = 0.88 / max(1, panels)
    if with_course:
        _draw_course(fig.add_axes((0.06 + len(slices) * width + 0.04, 0.14, width - 0.06, 0.21)),
                     course)
    for i, (caption, image) in enumerate(slices):
        ax = fig.add_axes((0.06 + i * width, 0.12, width - 0.01, 0.27))
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="white", fontsize=8, va="center")
        ax.text(0.97, 0.5, "L", transform=ax.transAxes, color="white", fontsize=8, va="center")
    legend = fig.add_axes((0.06, 0.07, 0.88, 0.03))
    legend.axis("off")
    for j, (name, colour) in enumerate((("Ground glass opacity", GGO_RGB),
                                        ("Consolidation", CONSOLIDATION_RGB))):
        legend.add_patch(_patch(0.02 + 0.35 * j, colour))
        legend.text(0.06 + 0.35 * j, 0.5, name, fontsize=8, va="center")
    legend.text(0.72, 0.5, "lines: lobe borders", fontsize=8, va="center")

    pdf = io.BytesIO()
    fig.savefig(pdf, format="pdf", metadata={"Creator": "lungnode", "Producer": "lungnode"})
    fig.set_dpi(SUMMARY_DPI)
    canvas = fig.canvas
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return ReportPage(pdf=pdf.getvalue(), rgb=rgb)


def _patch(x: float, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x, 0.15), 0.03, 0.7, color=np.asarray(colour) / 255.0)
