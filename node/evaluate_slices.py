"""``lungnode evaluate slices``: slice and slice x lobe sensitivity / specificity of the
default analysis against radiologists' presence labels (COVID-CT-MD ``labels.csv`` layout).

    lungnode evaluate slices <series-dir> --labels FILE.csv --subject NAME [--json FILE]
                             [--config FILE] [--engine unet|threshold]

labels.csv: one row per labelled slice with the columns ``subject``, ``file`` (path relative
to the CSV, e.g. ``P002/IM0001.dcm``, matched to the series' files by its last two path
components: folder and file name; ``slice_location_mm``, when given, must agree with the
file's Slice Location within 0.1 mm), ``infected`` (0/1) and one 0/1 column per lobe (LUL,
LLL, RUL, RML, RLL). A subject with no rows (e.g. normal002) is a lesion-free
series: every slice of it is a negative. The series is read directly from the files with
``load_series(require_valid_uids=False)`` (the COVID-CT-MD UIDs are not valid DICOM; the
network receiver still refuses them), segmented by the configured engine, and the lesion
area per slice / slice-lobe is compared with the labels by quant.slice_eval at several area
floors (a slice counts as positive with >= 25 mm^2 of lesion; the other floors are printed
too).

Two masks are scored. ``by_floor_mm2``: every lesion voxel (the mask in the SEG and in the
lesion volumes). ``by_floor_mm2_pneumonia``: only the lesion components the node counts as
pneumonia (quant.involvement: specks, solitary nodules, calcified foci and sub-centimetre
foci left out), i.e. the mask behind the lobe scores and the CT score, which is what the
radiologists' "infected" labels grade.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from node.config import ConfigError, load_settings
from node.volume import LoadedSeries, VolumeError, load_series
from quant.involvement import classify_lesions
from quant.slice_eval import (DEFAULT_FLOOR_MM2, FLOORS_MM2, LABEL_LOBES, SliceLabel, evaluate,
                              lesion_areas)


class LabelError(ValueError):
    """labels.csv cannot be matched to the series (message says why)."""


def read_labels(csv_path: Path, subject: str) -> list[dict[str, str]]:
    """The rows of ``subject`` (may be empty: a lesion-free subject)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"subject", "file", "infected", *LABEL_LOBES} - set(reader.fieldnames or [])
            if missing:
                raise LabelError(f"{csv_path}: columns {sorted(missing)} are missing")
            return [row for row in reader if row["subject"] == subject]
    except OSError as exc:
        raise LabelError(f"{csv_path}: cannot read ({exc})") from exc


def _flag(row: dict[str, str], column: str, csv_path: Path) -> bool:
    value = row[column].strip()
    if value not in ("0", "1"):
        raise LabelError(f"{csv_path}: {column}={value!r} for {row['file']} is not 0 or 1")
    return value == "1"


def slice_labels(series: LoadedSeries, rows: list[dict[str, str]], csv_path: Path) -> list[SliceLabel]:
    """One SliceLabel per slice of the series (slices without a row are negative)."""
    r = series.reorientation
    if r.axes[0] != 0:
        raise LabelError("slice labels need an axial series (the slices are not along the "
                         "patient's cranio-caudal axis)")
    n = series.n_slices
    by_name: dict[tuple[str, ...], int] = {}
    for k, path in enumerate(series.paths):
        by_name[path.resolve().parts[-2:]] = k
    labelled: dict[int, dict[str, str]] = {}
    for row in rows:
        name = Path(row["file"]).parts[-2:]
        if name not in by_name:
            raise LabelError(f"{csv_path}: {row['file']} is not a slice of this series")
        k = by_name[name]
        stated = (row.get("slice_location_mm") or "").strip()
        actual = series.source_datasets[k].get("SliceLocation")
        if stated and actual not in (None, "") and abs(float(stated) - float(actual)) > 0.1:
            raise LabelError(f"{csv_path}: {row['file']} is labelled at {stated} mm but the "
                             f"file's Slice Location is {float(actual):g} mm")
        labelled[k] = row
    labels = []
    for k in range(n):
        z = n - 1 - k if r.flips[0] else k
        row = labelled.get(k)
        if row is None:
            labels.append(SliceLabel(z=z, infected=False, lobes={c: False for c in LABEL_LOBES}))
        else:
            labels.append(SliceLabel(z=z, infected=_flag(row, "infected", csv_path),
                                     lobes={c: _flag(row, c, csv_path) for c in LABEL_LOBES}))
    return labels


def run(series_dir: Path, labels_csv: Path, subject: str, settings) -> dict:
    """Evaluate one series; returns the JSON document."""
    from node.analysis import segment_configured

    files = sorted(p for p in series_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        raise VolumeError(f"no .dcm files in {series_dir}")
    rows = read_labels(labels_csv, subject)
    series = load_series(files, require_valid_uids=False)
    labels = slice_labels(series, rows, labels_csv)
    masks = segment_configured(series.volume, settings.analysis)
    areas = lesion_areas(masks.lesion, masks.lobes, series.volume.spacing_mm, labels)
    results = evaluate(areas, FLOORS_MM2)
    counted = classify_lesions(series.volume.hu, masks.lesion, series.volume.spacing_mm).counted
    pneumonia = evaluate(lesion_areas(counted, masks.lobes, series.volume.spacing_mm, labels), FLOORS_MM2)
    return {
        "subject": subject,
        "series_dir": str(series_dir),
        "engine": masks.engine,
        "n_slices": len(labels),
        "n_infected_slices": int(areas.infected.sum()),
        "n_infected_slice_lobes": int(sum(v.sum() for v in areas.lobe_labels.values())),
        "default_floor_mm2": DEFAULT_FLOOR_MM2,
        "lobes_available": masks.lobes is not None,
        "by_floor_mm2": {f"{floor:g}": {level: c.to_json_dict() for level, c in res.items()}
                         for floor, res in results.items()},
        "by_floor_mm2_pneumonia": {f"{floor:g}": {level: c.to_json_dict() for level, c in res.items()}
                                   for floor, res in pneumonia.items()},
        "per_slice": [
            {"z": int(z), "infected": bool(inf), "lesion_mm2": round(float(a), 2),
             **({f"{c}_lesion_mm2": round(float(areas.lobe_mm2[c][i]), 2) for c in areas.lobe_mm2})}
            for i, (z, inf, a) in enumerate(zip(areas.z, areas.infected, areas.slice_mm2))
        ],
    }


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.3f}"


def print_summary(doc: dict, out=sys.stdout) -> None:
    print(f"{doc['subject']}: {doc['n_slices']} slices, {doc['n_infected_slices']} labelled "
          f"infected, {doc['n_infected_slice_lobes']} infected slice-lobes ({doc['engine']} engine)",
          file=out)
    for key, title in (("by_floor_mm2", "every lesion voxel"),
                       ("by_floor_mm2_pneumonia", "pneumonia components (what the CT score counts)")):
        if key in doc:
            print(f"-- {title}", file=out)
            _print_table(doc, doc[key], out)


def _print_table(doc: dict, table: dict, out) -> None:
    print("floor_mm2  slice_sens slice_spec  (tp fp tn fn)   lobe_sens lobe_spec  (tp fp tn fn)",
          file=out)
    for floor, res in table.items():
        s = res["slice"]
        mark = "  <- default" if float(floor) == doc["default_floor_mm2"] else ""
        line = (f"{floor:>9}  {_fmt(s['sensitivity'])}      {_fmt(s['specificity'])}     "
                f"({s['tp']} {s['fp']} {s['tn']} {s['fn']})")
        if "slice_lobe" in res:
            lo = res["slice_lobe"]
            line += (f"   {_fmt(lo['sensitivity'])}     {_fmt(lo['specificity'])}    "
                     f"({lo['tp']} {lo['fp']} {lo['tn']} {lo['fn']})")
        print(line + mark, file=out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lungnode evaluate slices",
        description="slice and slice x lobe sensitivity/specificity against labels.csv")
    parser.add_argument("series_dir", type=Path, help="folder with the CT series (.dcm files)")
    parser.add_argument("--labels", type=Path, required=True, help="labels.csv (COVID-CT-MD layout)")
    parser.add_argument("--subject", required=True, help="subject name in labels.csv (e.g. P002)")
    parser.add_argument("--json", type=Path, help="write the full result (per slice too) here")
    parser.add_argument("--config", type=Path, help="config file (analysis settings)")
    parser.add_argument("--engine", choices=("unet", "threshold"), help="override analysis.engine")
    args = parser.parse_args(argv)
    try:
        overrides = {"analysis": {"engine": args.engine}} if args.engine else None
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"lungnode evaluate slices: {exc}", file=sys.stderr)
        return 2
    if not args.series_dir.is_dir():
        print(f"lungnode evaluate slices: {args.series_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        doc = run(args.series_dir, args.labels, args.subject, settings)
    except (VolumeError, LabelError) as exc:
        print(f"lungnode evaluate slices: {exc}", file=sys.stderr)
        return 3
    print_summary(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return 0
