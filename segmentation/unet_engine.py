"""The ``unet`` lesion engine: COVID-Lesion Net inference on an HU volume.

``UNetLesionEngine`` loads the weights once (sha256 checked against the ``.sha256`` file
beside them, or an expected digest given by the caller), picks the device once
(auto|cpu|cuda) and predicts a boolean lesion mask on the source grid:

1. Crop to the lung mask's bounding box (+ CROP_MARGIN_MM) and keep only slices with lung.
2. Resample the crop in-plane to the training pixel size (``pixel_mm`` in the weights,
   1.5 mm), bilinear; the slice spacing is kept.
3. 2.5D input: each slice with its neighbours at about ``neighbour_mm`` (2.5 mm) above and
   below (offset k = max(1, round(neighbour_mm / dz)) slices, edge slices repeated).
4. Batched forward passes under ``torch.inference_mode()`` (float16 autocast on CUDA);
   P(lesion) = 1 - P(background) is resampled back to the crop (bilinear), thresholded at
   0.5, placed into the full grid and restricted to the lung mask.

The network returns 3 classes (background / GGO / consolidation); the node's GGO and
consolidation split stays the HU one (quant/), so ``predict`` returns the lesion union.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segmentation.net_weights import WeightsChecksumError, load_checked, pick_device, sha256_file
from segmentation.types import Volume
from segmentation.unet import CovidLesionNet, normalise_hu

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WEIGHTS", "UNetLesionEngine", "WeightsChecksumError", "get_engine", "pick_device",
           "segment_lesions_unet", "sha256_file"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "covid_lesion_net.pt"
CROP_MARGIN_MM = 10.0
BATCH_SLICES = 16


def pad_to_multiple(x: torch.Tensor, m: int = 8, value: float = 0.0):
    """Pad the last two dims of x up to multiples of m; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


class UNetLesionEngine:
    def __init__(self, weights_path: str | Path | None = None, device: str = "auto",
                 expected_sha256: str | None = None) -> None:
        path = Path(weights_path) if weights_path is not None else DEFAULT_WEIGHTS
        self.net, cfg, digest, self.device = load_checked(
            path, expected_sha256, "lesion model",
            lambda c: CovidLesionNet(c["in_channels"], c["out_channels"], c["width"]), device)
        self.config = cfg
        self.sha256 = digest
        self.pixel_mm = float(cfg["pixel_mm"])
        self.neighbour_mm = float(cfg["neighbour_mm"])
        log.info("lesion model %s loaded (sha256 %s…) on %s", path.name, digest[:12], self.device)

    # -- low level ---------------------------------------------------------------------
    def predict_stack(self, hu_stack: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C, H, W) float32 CPU for HU stacks (N, 3, H, W) already
        on the training grid; any H, W (padded internally)."""
        x = torch.as_tensor(hu_stack, dtype=torch.float32)
        outs = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], BATCH_SLICES):
                xb = normalise_hu(x[i:i + BATCH_SLICES].to(self.device))
                xb, (h, w) = pad_to_multiple(xb, 8, value=float(normalise_hu(torch.tensor(-1000.0))))
                if self.device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.float16):
                        logits = self.net(xb)
                else:
                    logits = self.net(xb)
                outs.append(torch.softmax(logits.float(), dim=1)[..., :h, :w].cpu())
        return torch.cat(outs) if outs else torch.zeros((0, 3) + tuple(x.shape[-2:]))

    # -- volumes ---------------------------------------------------------------------------
    def predict_proba(self, volume: Volume, lung_mask: np.ndarray) -> tuple[np.ndarray, tuple]:
        """P(lesion) float32 inside the lung's crop box, and that box (z, y, x slices)."""
        if lung_mask.shape != volume.hu.shape:
            raise ValueError(f"lung mask {lung_mask.shape} != volume {volume.hu.shape}")
        lung = lung_mask.astype(bool)
        zs = np.nonzero(lung.any(axis=(1, 2)))[0]
        if zs.size == 0:
            return np.zeros((0, 0, 0), np.float32), (slice(0, 0),) * 3
        dz, dy, dx = volume.spacing_mm
        ys = np.nonzero(lung.any(axis=(0, 2)))[0]
        xs = np.nonzero(lung.any(axis=(0, 1)))[0]
        my, mx = int(np.ceil(CROP_MARGIN_MM / dy)), int(np.ceil(CROP_MARGIN_MM / dx))
        ny, nx = volume.hu.shape[1:]
        box = (slice(int(zs[0]), int(zs[-1]) + 1),
               slice(max(0, ys[0] - my), min(ny, ys[-1] + my + 1)),
               slice(max(0, xs[0] - mx), min(nx, xs[-1] + mx + 1)))
        k = max(1, int(round(self.neighbour_mm / dz)))
        nz = volume.hu.shape[0]
        crop_h, crop_w = box[1].stop - box[1].start, box[2].stop - box[2].start
        out_h = max(8, int(round(crop_h * dy / self.pixel_mm)))
        out_w = max(8, int(round(crop_w * dx / self.pixel_mm)))
        # resample every needed slice once (centre slices and their neighbours)
        centres = np.arange(box[0].start, box[0].stop)
        need = np.unique(np.clip(np.concatenate([centres - k, centres, centres + k]), 0, nz - 1))
        index = {int(z): i for i, z in enumerate(need)}
        prob = np.zeros((len(centres), crop_h, crop_w), np.float32)
        with torch.inference_mode():
            src = torch.from_numpy(np.ascontiguousarray(
                volume.hu[need][:, box[1], box[2]], dtype=np.float32))
            small = torch.cat([F.interpolate(src[i:i + 64, None], size=(out_h, out_w),
                                             mode="bilinear", align_corners=False)[:, 0]
                               for i in range(0, len(need), 64)])
            for i in range(0, len(centres), BATCH_SLICES):
                cz = centres[i:i + BATCH_SLICES]
                idx = [[index[int(np.clip(z + o, 0, nz - 1))] for o in (-k, 0, k)] for z in cz]
                stack = small[torch.tensor(idx)]  # (B, 3, H, W)
                p = self.predict_stack(stack)
                les = (1.0 - p[:, 0:1])
                les = F.interpolate(les, size=(crop_h, crop_w), mode="bilinear",
                                    align_corners=False)[:, 0]
                prob[i:i + len(cz)] = les.numpy()
        return prob, box

    def predict(self, volume: Volume, lung_mask: np.ndarray) -> np.ndarray:
        """Boolean lesion mask on the volume's grid, inside ``lung_mask``."""
        prob, box = self.predict_proba(volume, lung_mask)
        out = np.zeros(volume.hu.shape, bool)
        if prob.size:
            out[box] = prob >= 0.5
        return out & lung_mask.astype(bool)


_ENGINES: dict[tuple[str, str], UNetLesionEngine] = {}


def get_engine(weights_path: str | Path | None = None, device: str = "auto") -> UNetLesionEngine:
    """The process-wide engine for (weights, device), loaded on first use."""
    key = (str(Path(weights_path) if weights_path else DEFAULT_WEIGHTS), device)
    if key not in _ENGINES:
        _ENGINES[key] = UNetLesionEngine(weights_path, device)
    return _ENGINES[key]


def segment_lesions_unet(volume: Volume, lung_mask: np.ndarray, device: str = "auto") -> np.ndarray:
    """Lesion mask (bool, volume grid) by the shipped COVID-Lesion Net (cached engine)."""
    return get_engine(None, device).predict(volume, lung_mask)
