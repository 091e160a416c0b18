"""Shipped network weights: checksum, device and loading, shared by the lung and lesion engines.

A weights file ``NAME.pt`` is a ``torch.save`` dict ``{"format", "config", "state_dict"}``
(float16 state dict); ``NAME.pt.sha256`` beside it holds its sha256. ``load_checked`` refuses
a file whose digest differs (a corrupt or swapped file must stop the node at start-up, not
give wrong masks), and builds the network in float32 on the chosen device, in eval mode.

On the CPU the weights are kept channels-last (NHWC): a 16-slice batch of either shipped
network then takes 0.57-0.68x the contiguous layout's time on the project's 2-core CPU
(benchmarks/kernels.py, 2026-12-03), with outputs equal within 1e-5 (float summation order).
On CUDA the layout is left as it was (not measured there).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch


class WeightsChecksumError(RuntimeError):
    """The weights file does not match its recorded sha256 (corrupt or swapped file)."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pick_device(device: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda`` (an error without a GPU)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_checked(path: Path, expected_sha256: str | None, what: str,
                 build: Callable[[dict], torch.nn.Module], device: str):
    """(net in eval mode on the device, config dict, sha256, device) from a checked file.

    expected_sha256: the digest to require; None reads it from ``path.sha256``.
    what: "lung model" / "lesion model", for the messages.
    build: config -> an untrained module of the right shape.
    """
    if not path.exists():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    if expected_sha256 is None:
        side = path.with_name(path.name + ".sha256")
        if not side.exists():
            raise WeightsChecksumError(f"no checksum file {side} beside the weights")
        expected_sha256 = side.read_text().split()[0]
    digest = sha256_file(path)
    if digest != expected_sha256.strip().lower():
        raise WeightsChecksumError(
            f"sha256 of {path} is {digest}, expected {expected_sha256}: refusing to load")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(ckpt["config"])
    dev = pick_device(device)
    net = build(cfg)
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v)
                         for k, v in ckpt["state_dict"].items()})
    net = net.to(dev).eval()
    if dev.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    return net, cfg, digest, dev
