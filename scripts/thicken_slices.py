"""Thicker slices of labelled series, for `lungnode evaluate slices` on another slice spacing.

    .venv/bin/python scripts/thicken_slices.py --out /tmp/thick \
        [--src ../shared/data/covid_ct_md_samples] [--subjects P002,cap002,normal002] [--factor 2]

Each subject's slices (sorted along the patient axis) are averaged in consecutive groups of
``--factor`` (a thicker reconstruction of the same data: SliceThickness grows by the spacing,
position and location are the group's mean) and written uncompressed to OUT/<subject>/ with new
SOP Instance UIDs; the labels are mapped into OUT/labels.csv (same layout as the source's): a
thick slice, or slice-lobe, is positive when any of its source slices is. Then, for example:

    lungnode evaluate slices /tmp/thick/P002 --labels /tmp/thick/labels.csv --subject P002 --json P002.json
"""

from __future__ import annotations

import argparse
import copy
import csv
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
LABEL_COLUMNS = ("infected", "LLL", "LUL", "RLL", "RML", "RUL")


def thicken(src: Path, out: Path, subjects: list[str], factor: int) -> None:
    rows = list(csv.DictReader(open(src / "labels.csv", newline="")))
    fields = list(rows[0].keys())
    out_rows = []
    for subject in subjects:
        slices = sorted((pydicom.dcmread(p) for p in (src / subject).glob("*.dcm")),
                        key=lambda d: float(d.ImagePositionPatient[2]), reverse=True)
        if len({(float(d.RescaleSlope), float(d.RescaleIntercept)) for d in slices}) != 1:
            raise SystemExit(f"{subject}: rescale differs between slices; not averaged")
        labelled = {Path(r["file"]).name: r for r in rows if r["subject"] == subject}
        (out / subject).mkdir(parents=True, exist_ok=True)
        for k in range(len(slices) // factor):
            group = slices[factor * k: factor * (k + 1)]
            pixels = np.mean([d.pixel_array.astype(np.float32) for d in group], axis=0)
            first = group[0]
            new = copy.deepcopy(first)
            new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            new.PixelData = np.rint(pixels).astype(first.pixel_array.dtype).tobytes()
            z = float(np.mean([float(d.ImagePositionPatient[2]) for d in group]))
            location = float(np.mean([float(d.SliceLocation) for d in group]))
            step = abs(float(group[-1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]))
            new.ImagePositionPatient = [first.ImagePositionPatient[0], first.ImagePositionPatient[1], round(z, 3)]
            new.SliceLocation = round(location, 3)
            new.SliceThickness = float(first.SliceThickness) + step
            new.InstanceNumber = k + 1
            new.SOPInstanceUID = generate_uid()
            new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
            name = f"T{k + 1:04d}.dcm"
            new.save_as(out / subject / name)
            sources = [labelled[Path(d.filename).name] for d in group if Path(d.filename).name in labelled]
            if sources:
                row = {"subject": subject, "slice_rank_superior_first": k,
                       "slice_location_mm": round(location, 3), "file": f"{subject}/{name}"}
                row.update({c: max(int(r[c]) for r in sources) for c in LABEL_COLUMNS})
                out_rows.append(row)
        print(f"{subject}: {len(slices) // factor} slices of {new.SliceThickness:g} mm")
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out_rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "covid_ct_md_samples")
    ap.add_argument("--subjects", default="P002,cap002,normal002")
    ap.add_argument("--factor", type=int, default=2)
    args = ap.parse_args(argv)
    thicken(args.src, args.out, args.subjects.split(","), args.factor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
