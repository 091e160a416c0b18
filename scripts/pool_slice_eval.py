"""Pool `lungnode evaluate slices --json` results of several subjects into one table.

    python scripts/pool_slice_eval.py P002.json cap002.json normal002.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> int:
    docs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    print("pooled: " + ", ".join(d["subject"] for d in docs))
    for key, title in (("by_floor_mm2", "every lesion voxel"),
                       ("by_floor_mm2_pneumonia", "pneumonia components (what the CT score counts)")):
        if all(key in d for d in docs):
            print(f"-- {title}")
            _table(docs, key)
    return 0


def _table(docs: list[dict], key: str) -> None:
    print("floor_mm2  slice_sens slice_spec   lobe_sens lobe_spec")
    for floor in docs[0][key]:
        cells = []
        for level in ("slice", "slice_lobe"):
            tp = fp = tn = fn = 0
            for d in docs:
                c = d[key][floor].get(level)
                if c is None:
                    continue
                tp, fp, tn, fn = tp + c["tp"], fp + c["fp"], tn + c["tn"], fn + c["fn"]
            sens = f"{tp / (tp + fn):.3f}" if tp + fn else "n/a"
            spec = f"{tn / (tn + fp):.3f}" if tn + fp else "n/a"
            cells.append(f"{sens:>10} {spec:>10}")
        print(f"{floor:>9} " + "  ".join(cells))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
