"""LungNet: the left/right lung U-Net as a pure ``nn.Module`` (no I/O, no weights here).

A 2-D U-Net on one axial slice at reduced in-plane resolution (the idea of lungmask R231,
which works per slice on 256 x 256; here about 2.5 mm pixels, so a chest is ~140 pixels
across). Four 2x2 max-pools give a receptive field that covers most of the chest, which the
network needs to tell the right lung from the left one and to draw the lung outline where
dense disease has replaced the air.

    enc1: 2 x CBA(1 -> w)        pool
    enc2: 2 x CBA(w -> 2w)       pool
    enc3: 2 x CBA(2w -> 4w)      pool
    enc4: 2 x CBA(4w -> 8w)      pool
    mid : 2 x CBA(8w -> 8w)
    up4 (8w -> 8w) + concat enc4 -> dec4: 2 x CBA(16w -> 4w)
    up3 (4w -> 4w) + concat enc3 -> dec3: 2 x CBA(8w -> 2w)
    up2 (2w -> 2w) + concat enc2 -> dec2: 2 x CBA(4w -> w)
    up1 (w -> w)   + concat enc1 -> dec1: 2 x CBA(2w -> w)
    head: 1x1 conv -> 3 logits (0 background, 1 right lung, 2 left lung)

CBA = 3x3 conv (no bias) + batch norm + ReLU. Input: (N, 1, H, W) HU normalised by
``normalise_hu``; H and W must be multiples of 16 (the engine pads). The array convention is
the project's canonical one (x = column toward the patient's left, y = row toward posterior),
so "left" is a fixed side of the image and the network is never trained with left-right flips.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HU_CLIP = (-1100.0, 500.0)
HU_CENTRE = -300.0
HU_SCALE = 600.0
CLASS_NAMES = ("background", "right_lung", "left_lung")
RIGHT, LEFT = 1, 2
MULTIPLE = 16


def normalise_hu(hu: np.ndarray | torch.Tensor):
    """Clip HU to HU_CLIP and map to about [-1.3, 1.3] (numpy or torch)."""
    if isinstance(hu, torch.Tensor):
        return (hu.clamp(*HU_CLIP) - HU_CENTRE) / HU_SCALE
    return (np.clip(hu, *HU_CLIP).astype(np.float32) - HU_CENTRE) / HU_SCALE


def _cba(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _double(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_cba(c_in, c_out), _cba(c_out, c_out))


class LungNet(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.enc1 = _double(in_channels, w)
        self.enc2 = _double(w, 2 * w)
        self.enc3 = _double(2 * w, 4 * w)
        self.enc4 = _double(4 * w, 8 * w)
        self.mid = _double(8 * w, 8 * w)
        self.pool = nn.MaxPool2d(2)
        self.up4 = nn.ConvTranspose2d(8 * w, 8 * w, 2, stride=2)
        self.up3 = nn.ConvTranspose2d(4 * w, 4 * w, 2, stride=2)
        self.up2 = nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2)
        self.up1 = nn.ConvTranspose2d(w, w, 2, stride=2)
        self.dec4 = _double(16 * w, 4 * w)
        self.dec3 = _double(8 * w, 2 * w)
        self.dec2 = _double(4 * w, w)
        self.dec1 = _double(2 * w, w)
        self.head = nn.Conv2d(w, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % MULTIPLE or x.shape[-2] % MULTIPLE:
            raise ValueError(f"LungNet input H, W must be multiples of {MULTIPLE}, got {tuple(x.shape[-2:])}")
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        m = self.mid(self.pool(e4))
        d4 = self.dec4(torch.cat([self.up4(m), e4], 1))
        d3 = self.dec3(torch.cat([self.up3(d4), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)
