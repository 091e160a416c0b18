"""Train LungNet (left/right lungs): ``python -m segmentation.train_lungs [--steps N] [--out DIR]
[--seed S] [--device auto|cpu|cuda] [--data-root DIR] [--max-minutes M] [--lr LR]
[--init WEIGHTS] [--full-res-bank K] [--bank-weight W] [--val-cases]``.

Data (see MODEL_CARD.md, "Lung network"): real chest CT read with SimpleITK in LPS
(canonical orientation), resampled in-plane to ``PIXEL_MM`` with the engine's own
``to_net_grid``. Masks ("truth"):

- ``cip_ct64``: CIP lm-64 label map (left thirds 9-11, right thirds 12-14, their vessels
  and intrapulmonary airways; 512 = trachea is not lung);
- ``totalseg_example_ct``: TotalSegmentator label map on the top 30 slices (lobes 10-14:
  left 10/11, right 12/13/14; liver, stomach, colon are not lung); the 82 slices below it
  are abdomen/pelvis with no lung (negatives with bowel gas);
- ``totalseg_abdomen_dicom``: the 20-slice upper-abdomen series, whose label map has no
  lung (negatives: liver, stomach and bowel gas);
- ``normal002`` (COVID-CT-MD normal), LIDC-IDRI-0002/0003 subsets, the TotalSegmentator
  pulmonary crop, the lungmask and CIP 512^2 slices: the classical method
  (``segmentation.lungs.segment_lungs``) as teacher; these lesion-free masks were checked by
  eye (``--render DIR`` writes the pictures).

Held out (never sampled): LIDC-IDRI-0001 (whole series): the validation series. COVID-CT-MD
P002 / cap002, RICORD and COVID-19-NY-SBU are never used (real, unlabelled disease; they are
only looked at in the model card).

Samples: one slice, random 144 x 144 crop of the slice on the net grid; in 75% of draws
disease is painted first (``segmentation.lung_synth.paint_disease``: the painted lung stays
lung, effusion leaves it). Augmentation: rotation +-12 deg, scale 0.85-1.2, translation, HU
gain/offset, noise 0-25 HU, blur (soft kernels / thick slices). No left-right flips (left is
a fixed side in the canonical orientation). Loss: cross-entropy + soft Dice of each lung.
Adam lr 2e-3, cosine to 2e-5 over the planned steps or the wall-time budget
(``--max-minutes``), whichever ends first. Every ``--val-every`` steps the model is scored on the
held-out painted validation set (LIDC-IDRI-0001 slices, fixed seed) and the best
checkpoint (mean Dice of the two lungs) is kept.

``--full-res-bank K`` (the shipped weights of 2026-12-02 use 16): K slabs of 48 slices of
normal002 get disease painted at **full resolution** (``paint_full_res``: the BANK_PATTERNS
in turn, including a homogeneous dependent "layer", which is lung) and are then resampled to
the net grid, as the node sees disease; they are sampled as hosts of their own (weight
``--bank-weight`` in all), never repainted. ``--val-cases``: the checkpoint is chosen on 16
whole-volume cases painted at full resolution into the LIDC-IDRI-0002/0003 subsets (taken out
of training), scored by the mean of per-case Dice, so that one lost white lung is not
hidden by many healthy slices; LIDC-IDRI-0001 then stays an untouched test series.
Outputs in --out: lung_net.pt (float16 state dict + config), lung_net.pt.sha256,
lung_net.metrics.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segmentation.lung_net import LEFT, RIGHT, LungNet, normalise_hu
from segmentation.lung_synth import paint_dependent_consolidation, paint_disease
from segmentation.train import read_image

PIXEL_MM = 2.5
CROP = 144
BATCH = 8
WIDTH = 16
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
# sampling weight per host (the rest 0.02): whole chests first, lung-free abdomen as negatives
HOST_WEIGHTS = {"normal002": 0.42, "cip_ct64": 0.22, "totalseg_example_ct": 0.14,
                "totalseg_abdomen_dicom": 0.06, "lidc0002": 0.06, "lidc0003": 0.06}


@dataclass
class Host:
    name: str
    hu: np.ndarray      # (z, y, x) float32 on the net grid
    label: np.ndarray   # uint8 0 bg / 1 right / 2 left
    dz: float
    truth: str          # where the label comes from
    painted: bool = False  # disease already painted (full resolution): never repainted


# ---------------------------------------------------------------------------------------
# loading (SimpleITK only; no pydicom in segmentation/)


def read_files(files: list[Path]):
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames([str(f) for f in files])
    return sitk.DICOMOrient(r.Execute(), "LPS")


def array_spacing(img):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img), tuple(float(s) for s in img.GetSpacing()[::-1])


def to_grid(a: np.ndarray, spacing, order: int = 1) -> np.ndarray:
    """(z, y, x) on the source grid -> net grid in-plane (HU bilinear, labels nearest)."""
    from segmentation.lung_engine import to_net_grid

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if order == 1:
        return to_net_grid(t, spacing[1:], PIXEL_MM).numpy()
    h = max(16, int(round(a.shape[1] * spacing[1] / PIXEL_MM)))
    w = max(16, int(round(a.shape[2] * spacing[2] / PIXEL_MM)))
    return F.interpolate(t[:, None], size=(h, w), mode="nearest")[:, 0].numpy().astype(np.uint8)


def teacher_label(hu: np.ndarray, spacing) -> np.ndarray:
    from segmentation.lungs import segment_lungs
    from segmentation.types import Volume

    lm = segment_lungs(Volume(hu.astype(np.float32), spacing))
    lab = np.zeros(hu.shape, np.uint8)
    lab[lm.right] = RIGHT
    lab[lm.left] = LEFT
    return lab


def make_host(name, hu, spacing, label, truth, painted: bool = False) -> Host:
    hu = np.maximum(hu.astype(np.float32), -1024.0)
    return Host(name, to_grid(hu, spacing), to_grid(label, spacing, order=0), float(spacing[0]), truth,
                painted)


@functools.lru_cache(maxsize=None)
def taught_full_res(path: Path):
    """(HU float32 clipped at -1024, spacing, classical-teacher label) of a series at full
    resolution; read and taught once per process (the hosts, the full-resolution bank and the
    validation cases share them)."""
    a, sp = array_spacing(read_image(path))
    a = np.maximum(a.astype(np.float32), -1024.0)
    return a, sp, teacher_label(a, sp)


def load_hosts(root: Path, which: str = "train") -> list[Host]:
    hosts: list[Host] = []

    def teach(name, path, files=None):
        if files is None and not path.exists():
            print(f"  host {name}: missing ({path}), skipped", flush=True)
            return
        if files is None:
            a, sp, lab = taught_full_res(path)
        else:
            a, sp = array_spacing(read_files(files))
            a = np.maximum(a.astype(np.float32), -1024.0)
            lab = teacher_label(a, sp)
        hosts.append(make_host(name, a, sp, lab, "classical teacher"))

    if which == "val":
        teach("lidc0001", root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series")
        return hosts
    teach("normal002", root / "covid_ct_md_samples/normal002")
    teach("lidc0002", root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset")
    teach("lidc0003", root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0003_subset")
    # the TotalSegmentator pulmonary crop is not used: its lungs touch the crop border, where
    # the classical teacher (body = largest component) fails (checked by eye)
    teach("lungmask_slices", None, sorted((root / "dicom_interop/lungmask").glob("*.dcm")))
    teach("cip_simple_dicom", None, sorted((root / "chest_imaging_platform_ct64/simple_dicom").glob("*.dcm")))
    # CIP ct-64 with its label map
    cip = root / "chest_imaging_platform_ct64"
    if (cip / "ct-64.nrrd").exists():
        a, sp = array_spacing(read_image(cip / "ct-64.nrrd"))
        lm, _ = array_spacing(read_image(cip / "lm-64.nrrd"))
        region = lm.astype(np.int64) % 256
        lab = np.zeros(a.shape, np.uint8)
        lab[np.isin(region, (12, 13, 14))] = RIGHT
        lab[np.isin(region, (9, 10, 11))] = LEFT
        hosts.append(make_host("cip_ct64", a, sp, lab, "CIP lm-64 label map"))
    ts = root / "totalsegmentator_examples"
    if (ts / "example_ct.nii.gz").exists():
        a, sp = array_spacing(read_image(ts / "example_ct.nii.gz"))
        seg, _ = array_spacing(read_image(ts / "example_seg.nii.gz"))
        lab = np.zeros(a.shape, np.uint8)
        off = a.shape[0] - seg.shape[0]  # example_ct_sm = the top 30 slices (checked)
        lab[off:][np.isin(seg, (12, 13, 14))] = RIGHT
        lab[off:][np.isin(seg, (10, 11))] = LEFT
        hosts.append(make_host("totalseg_example_ct", a, sp, lab, "TotalSegmentator label map"))
    d = ts / "example_ct_dicom"
    if d.exists():
        try:
            a, sp = array_spacing(read_files(sorted(d.iterdir())))
            seg, _ = array_spacing(read_image(ts / "example_seg_dicom.nii.gz"))
            if seg.shape == a.shape and not np.isin(seg, (10, 11, 12, 13, 14)).any():
                hosts.append(make_host("totalseg_abdomen_dicom", a, sp, np.zeros(a.shape, np.uint8),
                                       "TotalSegmentator label map (no lung)"))
        except RuntimeError as exc:  # JPEG 2000 not decodable by this SimpleITK build
            print(f"  host totalseg_abdomen_dicom: unreadable ({exc}), skipped", flush=True)
    for h in hosts:
        print(f"  host {h.name}: {h.hu.shape} dz {h.dz:.2f} mm, lung slices "
              f"{int((h.label > 0).any((1, 2)).sum())}, {h.truth}", flush=True)
    return hosts


# ---------------------------------------------------------------------------------------
# disease painted at full resolution (the node sees disease at the scanner's resolution;
# painting on the 2.5 mm grid gives a texture the node never sees)

BANK_PATTERNS = (("dependent_consolidation",), ("lobar_consolidation",), ("white_lung",),
                 ("effusion",), ("effusion", "atelectasis"), ("dependent_consolidation", "diffuse_ggo"),
                 ("effusion", "dependent_consolidation"), ("diffuse_ggo",), ("crazy_paving",),
                 ("emphysema",), "layer")


def paint_full_res(name: str, hu: np.ndarray, spacing, label: np.ndarray, rng: np.random.Generator,
                   choice) -> Host:
    """Paint ``choice`` (a BANK_PATTERNS entry) into a full-resolution host, then resample to
    the net grid. ``"layer"``: a homogeneous dependent layer (posterior 20-60% of both lungs at
    -40..+60 HU, ``paint_dependent_consolidation``), which is lung."""
    right, left = label == RIGHT, label == LEFT
    if choice == "layer":
        out = paint_dependent_consolidation(hu, right, left, fraction=float(rng.uniform(0.2, 0.6)),
                                            level_hu=float(rng.uniform(-40, 60)), rng=rng)
        r, lf = right, left
    else:
        sides = "both" if rng.random() < 0.6 else ("right" if rng.random() < 0.5 else "left")
        out, r, lf, _eff = paint_disease(hu, right, left, spacing, rng, patterns=choice, sides=sides)
    lab = np.zeros(hu.shape, np.uint8)
    lab[r] = RIGHT
    lab[lf] = LEFT
    tag = choice if isinstance(choice, str) else "+".join(choice)
    return make_host(f"{name}:{tag}", out, spacing, lab, "painted at full resolution", painted=True)


BANK_SLAB = 48


def full_res_bank(root: Path, k: int, seed: int) -> list[Host]:
    """``k`` variants of normal002 painted at full resolution, each a random slab of
    ``BANK_SLAB`` slices with lung (patterns cycle through BANK_PATTERNS)."""
    path = root / "covid_ct_md_samples/normal002"
    if k <= 0 or not path.exists():
        return []
    a, sp, lab = taught_full_res(path)
    rng = np.random.default_rng(seed)
    bank = []
    zl = np.nonzero((lab > 0).any((1, 2)))[0]
    for i in range(k):
        t = time.time()
        z0 = int(rng.integers(zl.min(), max(zl.min() + 1, zl.max() - BANK_SLAB + 2)))
        zs = slice(z0, z0 + BANK_SLAB)
        bank.append(paint_full_res("normal002", a[zs], sp, lab[zs], rng, BANK_PATTERNS[i % len(BANK_PATTERNS)]))
        print(f"  bank {bank[-1].name}: {time.time() - t:.0f}s", flush=True)
    return bank


# ---------------------------------------------------------------------------------------
# samples


def _crop_at(a: np.ndarray, cy: int, cx: int, size: int, fill) -> np.ndarray:
    h, w = a.shape[-2:]
    y0, x0 = cy - size // 2, cx - size // 2
    out = np.full(a.shape[:-2] + (size, size), fill, a.dtype)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(h, y0 + size), min(w, x0 + size)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[..., sy0:sy1, sx0:sx1]
    return out


def draw_sample(host: Host, z: int, rng: np.random.Generator, paint: bool, size: int = CROP + 32):
    """(size, size) HU and label from slice z of host, centred near the body centre."""
    hu, lab = host.hu[z], host.label[z]
    body = hu > -500
    if body.any():
        ys, xs = np.nonzero(body)
        cy, cx = int(ys.mean()), int(xs.mean())
    else:
        cy, cx = hu.shape[0] // 2, hu.shape[1] // 2
    cy += int(rng.integers(-12, 13))
    cx += int(rng.integers(-12, 13))
    hu = _crop_at(hu, cy, cx, size, np.float32(-1024.0))
    lab = _crop_at(lab, cy, cx, size, np.uint8(0))
    if paint and (lab > 0).sum() > 50:
        sp = (host.dz, PIXEL_MM, PIXEL_MM)
        out, r, lf, _eff = paint_disease(hu[None], (lab == RIGHT)[None], (lab == LEFT)[None], sp, rng)
        hu = out[0]
        lab = np.zeros_like(lab)
        lab[r[0]] = RIGHT
        lab[lf[0]] = LEFT
    return hu, lab


def pick_slice(hosts, weights, rng):
    h = hosts[rng.choice(len(hosts), p=weights)]
    return h, int(rng.integers(h.hu.shape[0]))


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """x (B,S,S) HU, y (B,S,S) -> random affine, centre CROP, intensity augmentation."""
    b, s = x.shape[0], x.shape[-1]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(12)
    scale = torch.exp((torch.rand(b, generator=g) * 2 - 1) * math.log(1.2))
    c, si = torch.cos(ang) / scale, torch.sin(ang) / scale
    r = CROP / s
    tx = (torch.rand(b, generator=g) * 2 - 1) * 0.08
    ty = (torch.rand(b, generator=g) * 2 - 1) * 0.08
    theta = torch.stack([torch.stack([c * r, -si * r, tx], 1), torch.stack([si * r, c * r, ty], 1)], 1)
    grid = F.affine_grid(theta, (b, 1, CROP, CROP), align_corners=False)
    xa = F.grid_sample(x[:, None] + 1024.0, grid, mode="bilinear", padding_mode="zeros",
                       align_corners=False) - 1024.0
    ya = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                       align_corners=False)[:, 0].long()
    blur = torch.rand(b, generator=g) < 0.3
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        kk = (k[:, None] * k[None, :])[None, None]
        xa[blur] = F.conv2d(F.pad(xa[blur], (1, 1, 1, 1), mode="replicate"), kk)
    gain = 1.0 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 0.06
    off = (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 40.0
    xa = (xa + 1024.0) * gain - 1024.0 + off
    sig = torch.rand(b, 1, 1, 1, generator=g) * 25.0
    xa = xa + sig * torch.randn(xa.shape, generator=g)
    return xa, ya


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, y)
    p = torch.softmax(logits, 1)
    dice = 0.0
    for c in (RIGHT, LEFT):
        t = (y == c).float()
        dice = dice + 1.0 - (2 * (p[:, c] * t).sum() + 1.0) / (p[:, c].sum() + t.sum() + 1.0)
    return ce + dice / 2


# ---------------------------------------------------------------------------------------
# validation: held-out LIDC-IDRI-0001 slices, painted with a fixed seed


def build_val(hosts: list[Host], n: int, seed: int):
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for i in range(n):
        h = hosts[i % len(hosts)]
        zl = np.nonzero((h.label > 0).any((1, 2)))[0]
        z = int(zl[rng.integers(len(zl))]) if i % 6 else int(rng.integers(h.hu.shape[0]))
        x, y = draw_sample(h, z, rng, paint=i % 4 != 0, size=h.hu.shape[1] + 32 - (h.hu.shape[1] % 16))
        X.append(x)
        Y.append(y)
    return np.stack(X), np.stack(Y)


VAL_CASES = (None, "layer", ("dependent_consolidation",), ("lobar_consolidation",), ("white_lung",),
             ("effusion",), ("effusion", "atelectasis"), ("diffuse_ggo",))


def build_val_cases(root: Path, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Whole-volume cases painted at full resolution into the LIDC-IDRI-0002/0003 subsets
    (held out of training with ``--val-cases``): (name, HU, label) on the net grid."""
    rng = np.random.default_rng(seed)
    cases = []
    for host in ("LIDC-IDRI-0002_subset", "LIDC-IDRI-0003_subset"):
        a, sp, lab = taught_full_res(root / "lidc_idri_chest_ct_dicom" / host)
        for choice in VAL_CASES:
            h = (make_host(f"{host}:healthy", a, sp, lab, "classical teacher") if choice is None
                 else paint_full_res(host, a, sp, lab, rng, choice))
            size = h.hu.shape[1] + 32 - (h.hu.shape[1] % 16)
            hu = np.stack([_crop_at(h.hu[z], h.hu.shape[1] // 2, h.hu.shape[2] // 2, size, np.float32(-1024.0))
                           for z in range(h.hu.shape[0])])
            lb = np.stack([_crop_at(h.label[z], h.hu.shape[1] // 2, h.hu.shape[2] // 2, size, np.uint8(0))
                           for z in range(h.hu.shape[0])])
            cases.append((h.name, hu, lb))
    return cases


def val_cases_score(net, cases, device) -> dict:
    """Mean over the cases of each case's mean right/left Dice (every case counts the same, so
    a lost white lung is not hidden by many healthy slices) and of the lung volume error."""
    dices, errors = [], []
    for _name, X, Y in cases:
        d = val_dice(net, X, Y, device)
        dices.append(d["mean"])
        errors.append(abs(d["volume_error"]))
    return {"mean": float(np.mean(dices)), "worst": float(np.min(dices)),
            "mean_abs_volume_error": float(np.mean(errors))}


def val_dice(net, X, Y, device) -> dict:
    net.eval()
    inter = {RIGHT: 0.0, LEFT: 0.0}
    tot = {RIGHT: 0.0, LEFT: 0.0}
    found = truth = 0.0
    with torch.inference_mode():
        for i in range(0, len(X), 16):
            x = normalise_hu(torch.from_numpy(X[i:i + 16])).to(device)[:, None]
            pred = net(x).argmax(1).cpu().numpy()
            for c in (RIGHT, LEFT):
                t = Y[i:i + 16] == c
                q = pred == c
                inter[c] += float((t & q).sum())
                tot[c] += float(t.sum() + q.sum())
            found += float((pred > 0).sum())
            truth += float((Y[i:i + 16] > 0).sum())
    net.train()
    d = {name: 2 * inter[c] / max(tot[c], 1.0) for name, c in (("right", RIGHT), ("left", LEFT))}
    d["mean"] = (d["right"] + d["left"]) / 2
    d["volume_error"] = 100.0 * (found - truth) / max(truth, 1.0)
    return d


def _fmt(d: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in d.items())


def save_weights(net: LungNet, out: Path, extra: dict) -> str:
    from segmentation.net_weights import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
          for k, v in net.state_dict().items()}
    cfg = {"in_channels": net.in_channels, "out_channels": net.out_channels, "width": net.width,
           "pixel_mm": PIXEL_MM, "classes": ["background", "right_lung", "left_lung"], **extra}
    f = out / "lung_net.pt"
    tmp = f.with_suffix(".pt.tmp")
    torch.save({"format": 1, "config": cfg, "state_dict": sd}, tmp)
    tmp.replace(f)
    digest = sha256_file(f)
    (out / "lung_net.pt.sha256").write_text(f"{digest}  lung_net.pt\n")
    return digest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m segmentation.train_lungs", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--max-minutes", type=float, default=40.0, help="stop training after this wall time")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "weights"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default=None, help="start from these weights (a continuation run)")
    ap.add_argument("--full-res-bank", type=int, default=0, metavar="K",
                    help="add K whole-volume variants of normal002 painted at full resolution")
    ap.add_argument("--bank-weight", type=float, default=0.4, help="sampling weight of the bank, in all")
    ap.add_argument("--val-cases", action="store_true",
                    help="choose the checkpoint on whole-volume painted cases of the LIDC-IDRI-0002/0003 "
                         "subsets (then held out of training) instead of LIDC-IDRI-0001 slices")
    args = ap.parse_args(argv)

    from segmentation.net_weights import pick_device

    torch.set_num_threads(args.threads)
    t0 = time.time()
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    root = Path(args.data_root)
    rng = np.random.default_rng(args.seed)
    tg = torch.Generator().manual_seed(args.seed)
    print(f"[train_lungs] device {device}, seed {args.seed}, data {root}", flush=True)
    hosts = load_hosts(root, "train")
    if args.val_cases:
        hosts = [h for h in hosts if h.name not in ("lidc0002", "lidc0003")]
        cases = build_val_cases(root, seed=1234)
        validation = (f"{len(cases)} whole-volume cases painted at full resolution into LIDC-IDRI-0002/0003 "
                      "(held out of training); score: mean of per-case Dice")
        evaluate = lambda: val_cases_score(net, cases, device)  # noqa: E731
    else:
        val_hosts = load_hosts(root, "val")
        VX, VY = build_val(val_hosts, 96, seed=1234)
        validation = "LIDC-IDRI-0001 (whole series held out), 96 slices, 3/4 painted, seed 1234"
        evaluate = lambda: val_dice(net, VX, VY, device)  # noqa: E731
    print(f"[train_lungs] validation: {validation}; loaded in {time.time() - t0:.0f}s", flush=True)
    bank = full_res_bank(root, args.full_res_bank, args.seed + 1)
    weights = np.array([HOST_WEIGHTS.get(h.name, 0.02) for h in hosts]
                       + [args.bank_weight / max(1, len(bank))] * len(bank), float)
    hosts = hosts + bank
    weights /= weights.sum()

    net = LungNet(1, 3, WIDTH)
    if args.init:
        from segmentation.lung_engine import LungNetEngine

        net.load_state_dict(LungNetEngine(args.init, "cpu").net.state_dict())
        print(f"[train_lungs] initialised from {args.init}", flush=True)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    total = args.steps
    budget_s = args.max_minutes * 60.0

    def set_lr(step: int, elapsed: float) -> float:
        # cosine to 1% over the planned steps or the wall-time budget, whichever ends first
        frac = min(1.0, max(step / max(1, total), elapsed / budget_s))
        lr = args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        return lr

    net.train()
    best = {"mean": -1.0}
    best_state = None
    best_step = 0
    history = []
    run = 0.0
    t_train = time.time()
    step = 0
    for step in range(total):
        xs, ys = [], []
        for _ in range(BATCH):
            h, z = pick_slice(hosts, weights, rng)
            x, y = draw_sample(h, z, rng, paint=not h.painted and rng.random() < 0.75)
            xs.append(x)
            ys.append(y)
        x, y = augment(torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64)), tg)
        lr = set_lr(step, time.time() - t_train)
        loss = loss_fn(net(normalise_hu(x).to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = float(loss.detach())
        run = 0.98 * run + 0.02 * lv if step else lv
        el = time.time() - t_train
        last = step + 1 == total or el > budget_s
        if (step + 1) % args.val_every == 0 or last:
            d = evaluate()
            history.append({"step": step + 1, "loss": run, **d, "seconds": el})
            mark = ""
            if d["mean"] > best["mean"]:
                best, best_step = d, step + 1
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                mark = " *"
            print(f"[train_lungs] step {step + 1}/{total} loss {run:.4f} lr {lr:.2e} "
                  f"val {_fmt(d)}{mark} {el:.0f}s "
                  f"({el / (step + 1):.2f} s/step)", flush=True)
        if last:
            break
    train_s = time.time() - t_train
    net.load_state_dict(best_state)
    net.eval()
    extra = {"seed": args.seed, "init": Path(args.init).name if args.init else None, "steps_run": step + 1, "steps_planned": total, "best_step": best_step,
             "batch": BATCH, "crop": CROP, "full_res_bank": args.full_res_bank, "val_cases": args.val_cases}
    out = Path(args.out)
    digest = save_weights(net, out, extra)
    metrics = {"weights_sha256": digest, "train_seconds": train_s, "device": str(device),
               "torch": torch.__version__, "config": extra, "best_val": best, "history": history,
               "hosts": [{"name": h.name, "slices": int(h.hu.shape[0]), "truth": h.truth} for h in hosts],
               "validation": validation}
    (out / "lung_net.metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"[train_lungs] best step {best_step} val {_fmt(best)}; "
          f"weights {out / 'lung_net.pt'} sha256 {digest}; total {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
