"""Train COVID-Lesion Net: ``python -m segmentation.train [--epochs N] [--out DIR] [--seed S]
[--device auto|cpu|cuda] [--site-data DIR] [--init WEIGHTS] [--data-root DIR]
[--synth-patterns P1,P2,...]``.

Data (see MODEL_CARD.md):
- MedSeg slices, Inf-Net ``train`` split only (50 slices), calibrated to HU
  (segmentation.medseg), on the model grid; the 16 Inf-Net ``test`` slices are the
  validation split and are never sampled here.
- Real lesion-free chest CT hosts on the model grid (in-plane ``PIXEL_MM``): LIDC-IDRI-0001
  (caudal half only: slices 0..66 in ascending z; the cranial half is held out for the
  false-positive check), LIDC-IDRI-0002/0003 subsets, CIP ct-64, TotalSegmentator
  example_ct, the two lungmask slices. A pool of 2.5D slabs is drawn once (seeded): 80%
  get synthetic lesions (segmentation.lesion_synth), 20% stay lesion-free negatives.
  COVID-19-NY-SBU slices are not used (real, unlabelled lesions).
- ``--site-data DIR``: NIfTI pairs DIR/images/<case>.nii.gz + DIR/labels/<case>.nii.gz
  (0 background, 1 GGO, 2 consolidation; a binary label is split at -350 HU), sampled like
  the hosts but with their own labels and no synthesis. DICOM-SEG pairs are not read here.

Each batch (8): MedSeg and slab samples half and half, random 128 x 128 crops, random
rotation (+-15 deg), scale (0.8-1.25), left-right flip; intensity: MedSeg gamma (0.7-1.4 on
the 8-bit gray before calibration), HU gain/offset, noise, blur. Loss: cross-entropy
(3 classes) + soft Dice of the lesion union. Adam (lr 2e-3, cosine to 2e-5).
Outputs in --out: covid_lesion_net.pt (float16 state dict + config), .sha256,
covid_lesion_net.metrics.json (validation Dice, false-positive % on LIDC, timings).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from segmentation.lesion_synth import ALL_PATTERNS, DENSE_FAMILY, PATTERNS, add_mimics, synthesize_lesions
from segmentation.medseg import calibrate_to_hu, load_medseg, model_grid_shape
from segmentation.unet import CovidLesionNet, normalise_hu

PIXEL_MM = 1.5
NEIGHBOUR_MM = 2.5
CROP = 128
SLAB = 160
BATCH = 8
STEPS_PER_EPOCH = 250
POOL_SIZE = 1200
WIDTH = 16
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
LIDC1_TRAIN_SLICES = 66  # LIDC-IDRI-0001 slices [0, 66) train hosts, the rest held out


@dataclass
class Host:
    name: str
    hu: np.ndarray  # (z, y, x) float32 on PIXEL_MM in-plane, cropped to the lung box
    lung: np.ndarray
    dz: float
    labels: np.ndarray | None = None  # site data only


# ---------------------------------------------------------------------------------------
# loading (SimpleITK only: DICOM series, NRRD, NIfTI; no pydicom in segmentation/)


def read_image(path: Path):
    import SimpleITK as sitk

    if path.is_dir():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(path)))
        img = r.Execute()
    else:
        img = sitk.ReadImage(str(path))
    return sitk.DICOMOrient(img, "LPS")


def to_model_grid(a: np.ndarray, spacing_yx, order: int = 1) -> np.ndarray:
    f = (1.0, spacing_yx[0] / PIXEL_MM, spacing_yx[1] / PIXEL_MM)
    return ndi.zoom(a, f, order=order, mode="nearest", grid_mode=True)


def make_host(name, hu, spacing, labels=None, z_range=None) -> Host | None:
    from segmentation.lungs import segment_lungs
    from segmentation.types import Volume

    hu = hu.astype(np.float32)
    lm = segment_lungs(Volume(hu, tuple(float(s) for s in spacing)))
    lung = lm.left | lm.right
    if z_range is not None:
        hu, lung = hu[z_range], lung[z_range]
        labels = labels[z_range] if labels is not None else None
    if lung.sum() == 0:
        return None
    hu_g = to_model_grid(hu, spacing[1:])
    lung_g = to_model_grid(lung.astype(np.float32), spacing[1:]) > 0.5
    lab_g = to_model_grid(labels, spacing[1:], order=0).astype(np.uint8) if labels is not None else None
    ys = np.nonzero(lung_g.any((0, 2)))[0]
    xs = np.nonzero(lung_g.any((0, 1)))[0]
    m = 12
    sl = (slice(None), slice(max(0, ys[0] - m), ys[-1] + m + 1), slice(max(0, xs[0] - m), xs[-1] + m + 1))
    return Host(name, hu_g[sl], lung_g[sl], float(spacing[0]),
                lab_g[sl] if lab_g is not None else None)


def load_hosts(root: Path, exclude: tuple[str, ...] = ()) -> list[Host]:
    import SimpleITK as sitk

    srcs = [
        ("lidc0001_caudal", root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series", slice(0, LIDC1_TRAIN_SLICES)),
        ("lidc0002", root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset", None),
        ("lidc0003", root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0003_subset", None),
        ("cip_ct64", root / "chest_imaging_platform_ct64/ct-64.nrrd", None),
        ("totalseg_example_ct", root / "totalsegmentator_examples/example_ct.nii.gz", None),
        ("lungmask_slices", root / "dicom_interop/lungmask", None),
    ]
    hosts = []
    for name, p, zr in srcs:
        if name in exclude:
            print(f"  host {name}: excluded (--exclude-hosts)", flush=True)
            continue
        if not p.exists():
            print(f"  host {name}: missing ({p}), skipped", flush=True)
            continue
        img = read_image(p)
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        sp = img.GetSpacing()[::-1]
        if name == "lungmask_slices":  # two 1-mm slices: padding value -2048 -> air
            a = np.maximum(a, -1024)
        h = make_host(name, a, sp, z_range=zr)
        if h is not None:
            hosts.append(h)
            print(f"  host {name}: {h.hu.shape} dz {h.dz:.2f} mm, lung slices {int(h.lung.any((1, 2)).sum())}", flush=True)
    return hosts


def load_site_data(d: Path) -> list[Host]:
    import SimpleITK as sitk

    hosts = []
    for img_f in sorted((d / "images").glob("*.nii*")):
        lab_f = d / "labels" / img_f.name
        if not lab_f.exists():
            raise FileNotFoundError(f"site data: no label {lab_f} for {img_f}")
        img, lab = read_image(img_f), read_image(lab_f)
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        lb = sitk.GetArrayFromImage(lab).astype(np.uint8)
        if a.shape != lb.shape:
            raise ValueError(f"site data {img_f.name}: image {a.shape} != label {lb.shape}")
        if lb.max() == 1:  # binary: split by HU
            lb = np.where(lb > 0, np.where(a >= -350, 2, 1), 0).astype(np.uint8)
        h = make_host("site:" + img_f.name, a, img.GetSpacing()[::-1], labels=lb)
        if h is not None:
            hosts.append(h)
    if not hosts:
        raise FileNotFoundError(f"site data: no images/*.nii(.gz) with labels under {d}")
    return hosts


# ---------------------------------------------------------------------------------------
# samples


def _crop_at(a: np.ndarray, cy: int, cx: int, size: int, fill: float) -> np.ndarray:
    """Crop a (..., H, W) array centred at (cy, cx), padding with ``fill``."""
    h, w = a.shape[-2:]
    y0, x0 = cy - size // 2, cx - size // 2
    out = np.full(a.shape[:-2] + (size, size), fill, a.dtype)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(h, y0 + size), min(w, x0 + size)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[..., sy0:sy1, sx0:sx1]
    return out


def load_negative_hosts(root: Path) -> list[Host]:
    """Lung-free upper abdomen below the lung bases, every voxel labelled background.

    The lesion model is run over the lung's crop box; what lies under the diaphragm (liver,
    stomach, spleen, bowel) must not look like consolidation to it, or any rule that takes
    lesion voxels outside the lung mask as lung (``segmentation.lung_completion``) takes the
    abdomen. Hosts: TotalSegmentator example_ct, the 120 mm below its lowest lung slice (by its
    own label map, lobes 10-14) and, separately, its slices with lung, centred outside the lung
    (the liver, stomach and bowel beside the lung bases); the 20-slice TotalSegmentator
    upper-abdomen DICOM series (its label map has no lung). Slab centres are drawn inside the
    body, 20 mm from its edge."""
    from segmentation.train_lungs import array_spacing, read_files

    ts = root / "totalsegmentator_examples"
    hosts: list[Host] = []
    arrays = []
    if (ts / "example_ct.nii.gz").exists():
        a, sp = array_spacing(read_image(ts / "example_ct.nii.gz"))
        seg, _ = array_spacing(read_image(ts / "example_seg.nii.gz"))
        off = a.shape[0] - seg.shape[0]  # the label map covers the top slices (train_lungs)
        lung_ts = np.zeros(a.shape, bool)
        lung_ts[off:] = np.isin(seg, (10, 11, 12, 13, 14))
        zl = np.nonzero(lung_ts.any((1, 2)))[0]
        if len(zl):
            bottom = int(zl.min())  # z ascends cranially (LPS)
            z0 = max(0, bottom - int(round(120.0 / sp[0])))
            arrays.append(("totalseg_example_ct_abdomen", a[z0:bottom], sp, None))
            # the lung bases with the liver, stomach and bowel beside and under them: centres
            # outside the lung (by the label map), 10 mm from it
            arrays.append(("totalseg_example_ct_bases", a[bottom:], sp, lung_ts[bottom:]))
    d = ts / "example_ct_dicom"
    if d.exists():
        try:
            seg, _ = array_spacing(read_image(ts / "example_seg_dicom.nii.gz"))
            a, sp = array_spacing(read_files(sorted(d.iterdir())))
            if seg.shape == a.shape and not np.isin(seg, (10, 11, 12, 13, 14)).any():
                arrays.append(("totalseg_abdomen_dicom", a, sp, None))
        except RuntimeError as exc:  # JPEG 2000 not decodable by this SimpleITK build
            print(f"  negative host totalseg_abdomen_dicom: unreadable ({exc}), skipped", flush=True)
    for name, a, sp, lung in arrays:
        a = np.maximum(a.astype(np.float32), -1024.0)
        hu_g = to_model_grid(a, sp[1:])
        body = np.stack([ndi.binary_fill_holes(s > -500) for s in hu_g])
        centres = np.stack([ndi.binary_erosion(b, iterations=int(20 / PIXEL_MM)) for b in body])
        if lung is not None:
            lung_g = to_model_grid(lung.astype(np.float32), sp[1:]) > 0.5
            centres &= ~np.stack([ndi.binary_dilation(m, iterations=int(10 / PIXEL_MM)) for m in lung_g])
        if not centres.any():
            continue
        ys = np.nonzero(body.any((0, 2)))[0]
        xs = np.nonzero(body.any((0, 1)))[0]
        sl = (slice(None), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        hosts.append(Host(name, hu_g[sl], centres[sl], float(sp[0]), np.zeros(hu_g[sl].shape, np.uint8)))
        print(f"  negative host {name}: {hosts[-1].hu.shape} dz {sp[0]:.2f} mm", flush=True)
    return hosts


def _paint_effusion(hu: np.ndarray, lung: np.ndarray, spacing, rng: np.random.Generator):
    """Pleural effusion (``lung_synth``'s pattern: fluid layering in the posterior pleural
    space with its meniscus, the lung beside it compressed) into the slab's lungs. The two
    largest lung components stand for the two sides. Returns (hu, lung without the fluid)."""
    from segmentation.lung_synth import paint_disease

    lab, n = ndi.label(lung)
    if n == 0:
        return hu, lung
    sizes = ndi.sum(lung, lab, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1]
    a = lab == order[0] + 1
    b = lab == order[1] + 1 if n > 1 else np.zeros_like(lung)
    out, ra, rb, _eff = paint_disease(hu, a, b, spacing, rng, patterns=("effusion",), sides="both")
    return out, (ra | rb | (lung & ~a & ~b))


def slab_sample(host: Host, rng: np.random.Generator, synth: bool, patterns: tuple = PATTERNS,
                pattern_weights: tuple | None = None, mimic_fraction: float = 0.0,
                vessels_not_lesion: bool = False, effusion_fraction: float = 0.0,
                base_negative_fraction: float = 0.0):
    """(3, SLAB, SLAB) HU and (SLAB, SLAB) labels from a host.

    With ``pattern_weights`` (one per pattern) the pattern is drawn here with those weights and
    dense-family lesions cover at least 8% of the slab's lung (a dense focus smaller than that
    would be a nodule). ``mimic_fraction``: share of slabs that first get normal-lung mimics
    (``lesion_synth.add_mimics``: nodules, granulomas, dependent density, subpleural lines),
    labelled background. ``effusion_fraction``: share of synthetic slabs that first get a
    pleural effusion (labelled background; lesions are then painted into the rest of the
    lung). ``base_negative_fraction``: share of slabs (of hosts without labels) centred outside
    the lung, 10 mm from it, on the caudal third of the lung's slices (liver, stomach, spleen
    and bowel beside the lung bases, heart), labelled background and never painted.
    All default to the original behaviour (same random stream)."""
    nz = host.hu.shape[0]
    k = max(1, int(round(NEIGHBOUR_MM / host.dz)))
    zl = np.nonzero(host.lung.any((1, 2)))[0]
    if host.labels is None and base_negative_fraction > 0 and rng.random() < base_negative_fraction:
        z = int(rng.choice(zl[: max(1, len(zl) // 3)]))
        body = ndi.binary_fill_holes(host.hu[z] > -500)
        off = body & ~ndi.binary_dilation(host.lung[z], iterations=int(10 / PIXEL_MM))
        if off.any():
            zi = [int(np.clip(z + o, 0, nz - 1)) for o in (-k, 0, k)]
            pts = np.argwhere(off)
            cy, cx = pts[rng.integers(len(pts))]
            return _crop_at(host.hu[zi], cy, cx, SLAB, -1000.0), np.zeros((SLAB, SLAB), np.uint8)
    z = int(rng.choice(zl))
    zi = [int(np.clip(z + o, 0, nz - 1)) for o in (-k, 0, k)]
    pts = np.argwhere(host.lung[z])
    cy, cx = pts[rng.integers(len(pts))]
    hu = _crop_at(host.hu[zi], cy, cx, SLAB, -1000.0)
    lung = _crop_at(host.lung[zi], cy, cx, SLAB, False)
    if host.labels is not None:
        return hu, _crop_at(host.labels[z], cy, cx, SLAB, 0)
    spacing = (host.dz * k, PIXEL_MM, PIXEL_MM)
    if mimic_fraction > 0 and lung.sum() >= 50 and rng.random() < mimic_fraction:
        hu = add_mimics(hu, lung, spacing, rng)
    if effusion_fraction > 0 and synth and lung.sum() >= 50 and rng.random() < effusion_fraction:
        hu, lung = _paint_effusion(hu, lung, spacing, rng)
    if not synth or lung.sum() < 50:
        return hu, np.zeros((SLAB, SLAB), np.uint8)
    lung_ml = lung.sum() * PIXEL_MM * PIXEL_MM * host.dz * k / 1000.0
    pattern = None
    lo = 0.03
    if pattern_weights is not None:
        w = np.asarray(pattern_weights, float)
        pattern = patterns[int(rng.choice(len(patterns), p=w / w.sum()))]
        if pattern in DENSE_FAMILY:
            lo = 0.08
    frac = math.exp(rng.uniform(math.log(lo), math.log(0.9)))
    out, lab = synthesize_lesions(hu, lung, spacing, rng, frac * lung_ml,
                                  pattern=pattern, patterns=patterns,
                                  vessels_not_lesion=vessels_not_lesion)
    return out, lab[1]


def build_pool(hosts: list[Host], site: list[Host], rng: np.random.Generator, n: int,
               patterns: tuple = PATTERNS, pattern_weights: tuple | None = None,
               mimic_fraction: float = 0.0, vessels_not_lesion: bool = False,
               negatives: list[Host] | None = None, negative_fraction: float = 0.0,
               effusion_fraction: float = 0.0, base_negative_fraction: float = 0.0):
    """``negatives``: lung-free hosts (``load_negative_hosts``) that give the last
    ``negative_fraction`` of the pool, labelled background throughout."""
    weights = np.array([h.lung.any((1, 2)).sum() for h in hosts], float)
    weights /= weights.sum()
    X = np.zeros((n, 3, SLAB, SLAB), np.float16)
    Y = np.zeros((n, SLAB, SLAB), np.uint8)
    n_site = n // 2 if site else 0
    n_neg = int(round(n * negative_fraction)) if negatives else 0
    for i in range(n):
        if i < n_site:
            h = site[rng.integers(len(site))]
            x, y = slab_sample(h, rng, False)
        elif i >= n - n_neg:
            x, y = slab_sample(negatives[rng.integers(len(negatives))], rng, False)
        else:
            h = hosts[rng.choice(len(hosts), p=weights)]
            x, y = slab_sample(h, rng, rng.random() < 0.8, patterns, pattern_weights, mimic_fraction,
                               vessels_not_lesion, effusion_fraction, base_negative_fraction)
        X[i], Y[i] = x, y
    return X, Y


@dataclass
class MedSegTrain:
    gray: list[np.ndarray]  # uint8 on the model grid
    labels: list[np.ndarray]


def medseg_train_set(root: Path) -> MedSegTrain:
    gs, ls = [], []
    for sl in load_medseg(root, "train"):
        shape = model_grid_shape(sl.gray.shape, PIXEL_MM)
        f = (shape[0] / sl.gray.shape[0], shape[1] / sl.gray.shape[1])
        gs.append(np.clip(ndi.zoom(sl.gray.astype(np.float32), f, order=1), 0, 255).astype(np.uint8))
        ls.append(ndi.zoom(sl.labels, f, order=0))
    return MedSegTrain(gs, ls)


def medseg_sample(ms: MedSegTrain, rng: np.random.Generator):
    i = int(rng.integers(len(ms.gray)))
    g, lab = ms.gray[i], ms.labels[i]
    gamma = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
    g2 = np.clip(255.0 * (g / 255.0) ** gamma, 0, 255).astype(np.uint8)
    hu = calibrate_to_hu(g2)
    # crop centred on a lesion pixel (70%) or anywhere
    pts = np.argwhere(lab > 0) if rng.random() < 0.7 and (lab > 0).any() else np.argwhere(np.ones_like(lab))
    cy, cx = pts[rng.integers(len(pts))]
    hu_c = _crop_at(hu, cy, cx, SLAB, -1000.0)
    return np.repeat(hu_c[None], 3, 0), _crop_at(lab, cy, cx, SLAB, 0)


def augment_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """x (B,3,SLAB,SLAB) HU, y (B,SLAB,SLAB) -> random affine, centre CROP, intensity aug."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(15)
    scale = torch.exp((torch.rand(b, generator=g) * 2 - 1) * math.log(1.25))
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    c, s = torch.cos(ang) / scale, torch.sin(ang) / scale
    r = CROP / SLAB
    theta = torch.stack([torch.stack([c * flip * r, -s * r, torch.zeros(b)], 1),
                         torch.stack([s * flip * r, c * r, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, CROP, CROP), align_corners=False)
    xa = F.grid_sample(x + 1000.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1000.0
    ya = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    gain = 1.0 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 0.06
    off = (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 40.0
    xa = (xa + 1000.0) * gain - 1000.0 + off
    sig = torch.rand(b, 1, 1, 1, generator=g) * 20.0
    xa = xa + sig * torch.randn(xa.shape, generator=g)
    return xa, ya


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, y, weight=torch.tensor([1.0, 1.0, 1.5], device=logits.device))
    p = 1.0 - torch.softmax(logits, 1)[:, 0]
    t = (y > 0).float()
    dice = 1.0 - (2 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return ce + dice


# ---------------------------------------------------------------------------------------


def save_weights(net: CovidLesionNet, out: Path, extra: dict) -> str:
    from segmentation.net_weights import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
          for k, v in net.state_dict().items()}
    cfg = {"in_channels": net.in_channels, "out_channels": net.out_channels, "width": net.width,
           "pixel_mm": PIXEL_MM, "neighbour_mm": NEIGHBOUR_MM, **extra}
    f = out / "covid_lesion_net.pt"
    tmp = f.with_suffix(".pt.tmp")
    torch.save({"format": 1, "config": cfg, "state_dict": sd}, tmp)
    tmp.replace(f)
    digest = sha256_file(f)
    (out / "covid_lesion_net.pt.sha256").write_text(f"{digest}  covid_lesion_net.pt\n")
    return digest


def lidc_false_positive(engine, root: Path) -> dict:
    import SimpleITK as sitk

    from segmentation.lungs import segment_lungs
    from segmentation.types import Volume

    p = root / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series"
    img = read_image(p)
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    vol = Volume(a, tuple(float(s) for s in img.GetSpacing()[::-1]))
    lm = segment_lungs(vol)
    lung = lm.left | lm.right
    t = time.time()
    les = engine.predict(vol, lung)
    dt = time.time() - t
    held = np.zeros_like(lung)
    held[LIDC1_TRAIN_SLICES:] = True
    return {
        "lesion_percent_full_series": 100.0 * float(les.sum()) / max(1, int(lung.sum())),
        "lesion_percent_heldout_cranial_half": 100.0 * float((les & held).sum()) / max(1, int((lung & held).sum())),
        "predict_seconds": dt,
        "shape": list(a.shape),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lungnode train", description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12, help=f"epochs of {STEPS_PER_EPOCH} steps")
    ap.add_argument("--steps-per-epoch", type=int, default=STEPS_PER_EPOCH)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "weights"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    ap.add_argument("--site-data", default=None, help="NIfTI pairs: DIR/images/*.nii.gz + DIR/labels/*.nii.gz")
    ap.add_argument("--init", default=None, help="start from these weights (site fine-tuning)")
    ap.add_argument("--pool", type=int, default=POOL_SIZE, help="synthetic slab pool size")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--synth-patterns", default=",".join(PATTERNS),
                    help=f"lesion patterns drawn (uniformly) for the synthetic slabs, comma-separated "
                         f"from {','.join(ALL_PATTERNS)}; default: the four original ones")
    ap.add_argument("--pattern-weights", default=None,
                    help="comma-separated weights, one per --synth-patterns entry (default: uniform)")
    ap.add_argument("--mimic-fraction", type=float, default=0.0,
                    help="share of synthetic slabs that first get normal-lung mimics (nodules, "
                         "granulomas, dependent density, subpleural lines; labelled background)")
    ap.add_argument("--max-train-seconds", type=float, default=None,
                    help="stop training after this many seconds (the weights so far are saved; "
                         "the steps actually run are recorded)")
    ap.add_argument("--vessels-not-lesion", action="store_true",
                    help="label vessels / bronchial walls crossing synthetic GGO as background")
    ap.add_argument("--exclude-hosts", default="",
                    help="comma-separated host names not to use (e.g. totalseg_example_ct, whose "
                         "classical lung mask takes bowel gas)")
    ap.add_argument("--negative-fraction", type=float, default=0.0,
                    help="share of the slab pool drawn from lung-free upper abdomen below the lung "
                         "bases (load_negative_hosts), labelled background")
    ap.add_argument("--effusion-fraction", type=float, default=0.0,
                    help="share of synthetic slabs that first get a painted pleural effusion "
                         "(lung_synth's pattern), labelled background")
    ap.add_argument("--base-negative-fraction", type=float, default=0.0,
                    help="share of host slabs centred outside the lung beside the lung bases "
                         "(abdomen, heart), labelled background")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)
    patterns = tuple(p.strip() for p in args.synth_patterns.split(",") if p.strip())
    bad = [p for p in patterns if p not in ALL_PATTERNS]
    if bad or not patterns:
        ap.error(f"--synth-patterns: unknown {bad} (choose from {','.join(ALL_PATTERNS)})")
    pattern_weights = None
    if args.pattern_weights:
        try:
            pattern_weights = tuple(float(v) for v in args.pattern_weights.split(","))
        except ValueError:
            ap.error("--pattern-weights: not a comma-separated list of numbers")
        if len(pattern_weights) != len(patterns) or min(pattern_weights) < 0 or sum(pattern_weights) <= 0:
            ap.error(f"--pattern-weights: need {len(patterns)} non-negative weights, one per pattern")

    from segmentation.net_weights import pick_device
    from segmentation.unet_engine import UNetLesionEngine

    t0 = time.time()
    torch.set_num_threads(max(1, args.threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = pick_device(args.device)
    root = Path(args.data_root)
    rng = np.random.default_rng(args.seed)
    tg = torch.Generator().manual_seed(args.seed)

    print(f"[train] device {device}, seed {args.seed}, data {root}", flush=True)
    ms = medseg_train_set(root / "medseg_covid19_100slices_infnet")
    print(f"[train] MedSeg train slices: {len(ms.gray)} (Inf-Net train split)", flush=True)
    exclude = tuple(h.strip() for h in args.exclude_hosts.split(",") if h.strip())
    hosts = load_hosts(root, exclude)
    site = load_site_data(Path(args.site_data)) if args.site_data else []
    negatives = load_negative_hosts(root) if args.negative_fraction > 0 else []
    if args.negative_fraction > 0 and not negatives:
        ap.error("--negative-fraction: no lung-free abdomen host found under --data-root")
    t = time.time()
    print(f"[train] synthetic lesion patterns: {', '.join(patterns)}", flush=True)
    PX, PY = build_pool(hosts, site, rng, args.pool, patterns, pattern_weights, args.mimic_fraction,
                        args.vessels_not_lesion, negatives, args.negative_fraction, args.effusion_fraction,
                        args.base_negative_fraction)
    print(f"[train] slab pool {len(PX)} ({time.time() - t:.0f}s), lesion px fraction "
          f"{(PY > 0).mean():.3f}", flush=True)

    net = CovidLesionNet(3, 3, WIDTH)
    if args.init:
        init = UNetLesionEngine(args.init, "cpu")
        net.load_state_dict(init.net.state_dict())
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    total = args.epochs * args.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(1, total))))
    net.train()
    t_train = time.time()
    run = 0.0
    steps_run = 0
    for step in range(total):
        if args.max_train_seconds is not None and time.time() - t_train > args.max_train_seconds:
            print(f"[train] time bound {args.max_train_seconds:.0f}s reached at step {step}/{total}: "
                  "stopping", flush=True)
            break
        steps_run = step + 1
        xs, ys = [], []
        for j in range(BATCH):
            if j < BATCH // 2:
                x, y = medseg_sample(ms, rng)
            else:
                i = int(rng.integers(len(PX)))
                x, y = PX[i].astype(np.float32), PY[i]
            xs.append(x)
            ys.append(y)
        x = torch.from_numpy(np.stack(xs).astype(np.float32))
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        x, y = augment_batch(x, y, tg)
        x, y = normalise_hu(x).to(device), y.to(device)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        run = 0.98 * run + 0.02 * lv if step else lv
        if (step + 1) % args.steps_per_epoch == 0 or step == 0:
            el = time.time() - t_train
            print(f"[train] epoch {(step + 1) / args.steps_per_epoch:5.2f} step {step + 1}/{total} "
                  f"loss {run:.4f} lr {sched.get_last_lr()[0]:.2e} {el:.0f}s "
                  f"(eta {el / (step + 1) * (total - step - 1):.0f}s)", flush=True)
    train_s = time.time() - t_train
    net.eval()
    extra = {"seed": args.seed, "epochs": args.epochs, "steps": total, "batch": BATCH,
             "crop": CROP, "site_data": bool(site), "classes": ["background", "ggo", "consolidation"]}
    if patterns != PATTERNS:  # only when changed, so default runs stay byte-identical
        extra["synth_patterns"] = list(patterns)
    if pattern_weights is not None:
        extra["pattern_weights"] = list(pattern_weights)
    if args.mimic_fraction:
        extra["mimic_fraction"] = args.mimic_fraction
    if args.vessels_not_lesion:
        extra["vessels_not_lesion"] = True
    if exclude:
        extra["exclude_hosts"] = list(exclude)
    if negatives:
        extra["negative_fraction"] = args.negative_fraction
        extra["negative_hosts"] = [h.name for h in negatives]
    if args.effusion_fraction:
        extra["effusion_fraction"] = args.effusion_fraction
    if args.base_negative_fraction:
        extra["base_negative_fraction"] = args.base_negative_fraction
    if args.init:
        extra["init_sha256"] = init.sha256
        extra["lr"] = args.lr
    if steps_run != total:
        extra["steps_run"] = steps_run
    out = Path(args.out)
    digest = save_weights(net, out, extra)
    print(f"[train] weights {out / 'covid_lesion_net.pt'} sha256 {digest} ({train_s:.0f}s training)", flush=True)
    metrics = {"weights_sha256": digest, "train_seconds": train_s, "device": str(device),
               "torch": torch.__version__, "config": extra, "final_train_loss": run}
    if not args.no_eval:
        from segmentation.evaluate_medseg import evaluate

        eng = UNetLesionEngine(out / "covid_lesion_net.pt", args.device)
        val = evaluate(root / "medseg_covid19_100slices_infnet", "val", "unet", slices=None,
                       weights=str(out / "covid_lesion_net.pt"), device=args.device)
        metrics["medseg_val"] = {k: val[k] for k in ("n_slices", "lesion_dice", "ggo_dice",
                                                     "consolidation_dice", "hu_split")}
        metrics["medseg_val_per_slice"] = val["per_slice"]
        print(f"[train] MedSeg val (16 Inf-Net test slices): lesion {val['lesion_dice']:.3f} "
              f"GGO {val['ggo_dice']:.3f} consolidation {val['consolidation_dice']:.3f} "
              f"(HU split GGO {val['hu_split']['ggo_dice']:.3f} cons "
              f"{val['hu_split']['consolidation_dice']:.3f})", flush=True)
        fp = lidc_false_positive(eng, root)
        metrics["lidc_idri_0001_lesion_free"] = fp
        print(f"[train] LIDC-IDRI-0001 lesion %: full {fp['lesion_percent_full_series']:.3f}, "
              f"held-out cranial half {fp['lesion_percent_heldout_cranial_half']:.3f}", flush=True)
    metrics["total_seconds"] = time.time() - t0
    (out / "covid_lesion_net.metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"[train] done in {metrics['total_seconds']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
