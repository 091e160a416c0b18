"""Experiment: lung completion from the lesion model (segmentation/lung_completion.py). See
MODEL_CARD.md (LungNet card, "Lung completion") and candidates/cand_D.plan.md, cand_E.plan.md, cand_F.plan.md.

Rule: lesion-model components (P(lesion) >= 0.5 over the learned lung's crop box, the engine's
10 mm margin) outside the learned lung mask (and its airways) that touch the lung are added to
the lung. Columns "module*" run segmentation.lung_completion.complete_lungs for each
--min-contacts value (a component joins only if that fraction of its surface touches the
lung); columns "@<gate>" run the probe's own older rule, adding only where LungNet's own
P(lung) >= gate. Prints, per case, the lung volume error against the truth lung, the ml the
completion added outside the truth lung ("added_outside_truth_ml") and, for the module
columns, the whole completed lung outside the truth ("lung_outside_truth_ml", which includes
LungNet's own outline).

    .venv/bin/python segmentation/model_card/candidates/lung_completion_probe.py lidc0002,lidc0003,normal002 \
        [--lesion-weights W] [--gates ''] [--min-contacts 0,0.1,0.15] [--json F]
    hosts: lidc0002, lidc0003 (validation), normal002 (healthy only: design series), lidc0001 (test)
"""
import argparse, json, sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "benchmarks"))
from lung_net_eval import CASES, DATA, read  # noqa: E402
from segmentation.lung_completion import complete_lungs  # noqa: E402
from segmentation.lung_engine import get_lung_engine, to_net_grid  # noqa: E402
from segmentation.lung_synth import paint_dependent_consolidation, paint_disease  # noqa: E402
from segmentation.lungs import segment_lungs  # noqa: E402
from segmentation.types import Volume  # noqa: E402
from segmentation.unet_engine import get_engine  # noqa: E402

HOSTS = {"lidc0002": "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset",
         "lidc0003": "lidc_idri_chest_ct_dicom/LIDC-IDRI-0003_subset",
         "lidc0001": "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series",
         "normal002": "covid_ct_md_samples/normal002"}
GATES = (0.0, 0.01, 0.1, 0.3)
S = np.ones((3, 3, 3), bool)


def p_lung(leng, hu, spacing):
    n, hh, ww = hu.shape
    out = np.zeros(hu.shape, np.float32)
    for i in range(0, n, 16):
        src = torch.from_numpy(np.ascontiguousarray(hu[i:i + 16], dtype=np.float32))
        p = leng.predict_net_grid(to_net_grid(src, spacing[1:], leng.pixel_mm))
        out[i:i + 16] = (1 - F.interpolate(p, size=(hh, ww), mode="bilinear", align_corners=False)[:, 0]).numpy()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("hosts")
    ap.add_argument("--json")
    ap.add_argument("--lesion-weights", default=None, help="lesion model weights (default: shipped)")
    ap.add_argument("--gates", default=",".join(f"{g:g}" for g in GATES),
                    help="P(lung) gates of the probe's own rule ('' for none)")
    ap.add_argument("--min-contacts", default="0",
                    help="segmentation.lung_completion min_contact values to run (0: plain rule)")
    args = ap.parse_args()
    gates = tuple(float(g) for g in args.gates.split(",") if g)
    min_contacts = tuple(float(c) for c in args.min_contacts.split(","))
    leng, seng = get_lung_engine(None, "cpu"), get_engine(args.lesion_weights, "cpu")
    rows = []
    for host in args.hosts.split(","):
        vol = read(DATA / HOSTS[host])
        vml = vol.voxel_volume_ml
        healthy = segment_lungs(vol)
        r0, l0 = healthy.right, healthy.left
        cases = [("healthy", None, None, 0)]
        if host != "normal002":
            cases += [("issue_posterior_40pct", "issue", None, 0)] + CASES
        for name, patterns, sides, seed in cases:
            if patterns is None:
                hu, rt, lt = vol.hu, r0, l0
            elif patterns == "issue":
                hu, rt, lt = paint_dependent_consolidation(vol.hu, r0, l0, fraction=0.4), r0, l0
            else:
                hu, rt, lt, _ = paint_disease(vol.hu, r0, l0, vol.spacing_mm, np.random.default_rng(seed),
                                              patterns=patterns, sides=sides)
            sick = Volume(hu, vol.spacing_mm)
            pred = leng.predict(sick)
            lung = pred.left | pred.right
            prob, box = seng.predict_proba(sick, lung)
            cand = np.zeros(lung.shape, bool)
            cand[box] = prob >= 0.5
            cand &= ~lung & ~pred.airway
            pl = p_lung(leng, hu, vol.spacing_mm) if any(g > 0 for g in gates) else None
            truth = rt | lt
            truth_ml = float(truth.sum()) * vml
            row = {"host": host, "case": name,
                   "net_error_pct": round(100 * (float(lung.sum()) * vml - truth_ml) / truth_ml, 2)}
            rim = ndi.binary_dilation(lung, structure=S)
            for mc in min_contacts:
                done = complete_lungs(pred.right, pred.left, cand, vol.spacing_mm, pred.airway, min_contact=mc)
                both = done.right | done.left
                tag = "module" if mc == 0 else f"module_contact{mc:g}"
                row[f"error_pct@{tag}"] = round(100 * (float(both.sum()) * vml - truth_ml) / truth_ml, 2)
                # what the completion added (not LungNet's own outline) outside the truth lung,
                # as the gate columns count it; the whole completed lung outside the truth too
                row[f"added_outside_truth_ml@{tag}"] = round(float((both & ~lung & ~truth).sum()) * vml, 1)
                row[f"lung_outside_truth_ml@{tag}"] = round(float((both & ~truth).sum()) * vml, 1)
                row[f"side_dice@{tag}"] = [round(2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum())), 3)
                                           for a, b in ((done.right, rt), (done.left, lt))]
            for gate in gates:
                c = cand & (pl >= gate) if gate > 0 else cand
                labels, _ = ndi.label(c, structure=S)
                touching = np.unique(labels[rim & c])
                added = np.isin(labels, touching[touching > 0])
                row[f"error_pct@{gate:g}"] = round(100 * (float((lung | added).sum()) * vml - truth_ml) / truth_ml, 2)
                row[f"added_outside_truth_ml@{gate:g}"] = round(float((added & ~truth).sum()) * vml, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
