"""Build quant/data/normal_lung_hu_reference.json from lesion-free real lungs.

Sources (read-only, /work/shared/data or --data):
- LIDC-IDRI-0001 full series (133 slices, 0.703 mm, 2.5 mm): a real full-resolution chest CT
  without COVID-19 findings; lungs segmented with segmentation.lungs (the node's own method,
  so the reference matches what the node measures). Its few small nodules are < 0.1% of the
  lung volume.
- CIP ct-64 (64x64x79, 4.2 mm, true HU) with its automatic wholeLung-64 mask: an independent
  scanner and lung mask; it is strongly downsampled (partial volume widens the histogram), so
  it gets weight 0.25 against LIDC's 0.75.

Each case's lung histogram (quant.hu_distribution bins) is normalised, the weighted mean is
stored. Usage: .venv/bin/python scripts/build_normal_reference.py [--data DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant.hu_distribution import REFERENCE_PATH, bin_edges, lung_histogram  # noqa: E402
from segmentation.lungs import segment_lungs  # noqa: E402
from segmentation.types import Volume  # noqa: E402


def load_dicom_series(folder: Path) -> Volume:
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    dz = float(np.median(np.diff([float(d.ImagePositionPatient[2]) for d in slices])))
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    return Volume(hu=hu.astype(np.float32), spacing_mm=(dz, dy, dx))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=REFERENCE_PATH)
    args = parser.parse_args()

    lidc = load_dicom_series(args.data / "lidc_idri_chest_ct_dicom" / "LIDC-IDRI-0001_full_series")
    masks = segment_lungs(lidc)
    lidc_lung = masks.left | masks.right
    h_lidc = lung_histogram(lidc.hu, lidc_lung)

    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "chest_imaging_platform_ct64" / "ct-64.nrrd")))
    wl = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "chest_imaging_platform_ct64" / "wholeLung-64.nrrd")))
    h_cip = lung_histogram(ct.astype(np.float32), wl > 0)

    weights = {"lidc": 0.75, "cip": 0.25}
    probs = weights["lidc"] * h_lidc + weights["cip"] * h_cip
    probs /= probs.sum()
    vml = lidc.voxel_volume_ml
    doc = {
        "bin_edges_hu": bin_edges().tolist(),
        "probabilities": [round(float(p), 8) for p in probs],
        "sources": [
            {"case": "LIDC-IDRI-0001 full series (TCIA LIDC-IDRI via drivendataorg/concept-to-clinic)",
             "lung_mask": "segmentation.lungs.segment_lungs", "weight": weights["lidc"],
             "lung_volume_ml": round(float(lidc_lung.sum() * vml), 1),
             "why": "full-resolution real chest CT without COVID-19 findings"},
            {"case": "CIP ct-64 (acil-bwh/ChestImagingPlatform test data)",
             "lung_mask": "wholeLung-64.nrrd (CIP automatic)", "weight": weights["cip"],
             "why": "second scanner with an independent lung mask; downsampled 4.2 mm, so lower weight"},
        ],
        "method": ("per case: lung voxels' HU clipped to -1024..+200, 8-HU bins, normalised; "
                   "reference = weighted mean of the case histograms (scripts/build_normal_reference.py)"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    print(f"wrote {args.out}: LIDC lung {doc['sources'][0]['lung_volume_ml']} ml, notes {masks.notes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
