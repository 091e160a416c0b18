"""COVID-Lesion Net: the lesion U-Net as a pure ``nn.Module`` (no I/O, no weights here).

Shape (the study's): twelve conv + batch-norm + activation segments, three 2x2 max-pools on
the contracting path, three 2x2 transposed convolutions on the expansive path, and
concatenation bridges between the two paths:

    enc1: 2 x CBA(in -> w)       pool
    enc2: 2 x CBA(w -> 2w)       pool
    enc3: 2 x CBA(2w -> 4w)      pool
    mid : 2 x CBA(4w -> 8w)
    up3 (8w -> 4w) + concat enc3 -> dec3: 1 x CBA(8w -> 4w)
    up2 (4w -> 2w) + concat enc2 -> dec2: 1 x CBA(4w -> 2w)
    up1 (2w -> w)  + concat enc1 -> dec1: 2 x CBA(2w -> w)
    head: 1x1 conv -> ``out_channels`` logits

(2 + 2 + 2 + 2 + 1 + 1 + 2 = 12 CBA segments; the 1x1 head has no BN/activation.)

Input: ``in_channels`` = 3 neighbouring axial slices (2.5D), HU normalised by
``normalise_hu``. Output: logits with the input's spatial shape; with ``out_channels=3``
the classes are 0 background, 1 GGO, 2 consolidation (lesion = not background).
Spatial sizes must be multiples of 8 (the engine pads).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HU_CLIP = (-1100.0, 400.0)
HU_CENTRE = -400.0
HU_SCALE = 500.0
CLASS_NAMES = ("background", "ggo", "consolidation")


def normalise_hu(hu: np.ndarray | torch.Tensor):
    """Clip HU to HU_CLIP and map to about [-1.4, 1.6] (works on numpy or torch)."""
    if isinstance(hu, torch.Tensor):
        return (hu.clamp(*HU_CLIP) - HU_CENTRE) / HU_SCALE
    return (np.clip(hu, *HU_CLIP).astype(np.float32) - HU_CENTRE) / HU_SCALE


class ConvBNAct(nn.Sequential):
    """3x3 conv (no bias) + batch norm + ReLU: one of the twelve segments."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class CovidLesionNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.enc1 = nn.Sequential(ConvBNAct(in_channels, w), ConvBNAct(w, w))
        self.enc2 = nn.Sequential(ConvBNAct(w, 2 * w), ConvBNAct(2 * w, 2 * w))
        self.enc3 = nn.Sequential(ConvBNAct(2 * w, 4 * w), ConvBNAct(4 * w, 4 * w))
        self.mid = nn.Sequential(ConvBNAct(4 * w, 8 * w), ConvBNAct(8 * w, 8 * w))
        self.pool1, self.pool2, self.pool3 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec3 = ConvBNAct(8 * w, 4 * w)
        self.dec2 = ConvBNAct(4 * w, 2 * w)
        self.dec1 = nn.Sequential(ConvBNAct(2 * w, w), ConvBNAct(w, w))
        self.head = nn.Conv2d(w, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        e3 = self.enc3(self.pool2(e2))
        m = self.mid(self.pool3(e3))
        d3 = self.dec3(torch.cat([self.up3(m), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def lesion_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(lesion) per pixel, (N, H, W): sigmoid for a 1-channel head, 1 - P(bg) for 3 classes."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]
