"""Lung completion: dense lung that the lung mask left out, put back from the lesion model.

A lung mask drawn from the lung's appearance loses airless lung: a dependent or lobar
consolidation, a white lung, where the parenchyma is as dense as the chest wall next to it
(LungNet v2 loses 17-39% of the lung on such cases). The lesion model sees that tissue as
consolidation, because it recognises the disease (air bronchograms, the GGO rim, the shape)
rather than the air. So every lesion-model component outside the lung mask (and its airways)
that touches the lung is lung, and joins the side it touches most.

This relies on the lesion model leaving alone what is not lung: the upper abdomen under the
diaphragm and pleural effusion were trained as background for that reason (lesion model v3,
MODEL_CARD.md); a component that still takes them in is caught only by the quality flags
(``fluid_in_lung``, lung size against the body).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from segmentation.boxes import bounding_box

_FULL = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class CompletedLungs:
    right: np.ndarray
    left: np.ndarray
    n_components: int
    added_ml: float


def complete_lungs(right: np.ndarray, left: np.ndarray, lesion_candidates: np.ndarray,
                   spacing_mm, airway: np.ndarray | None = None,
                   min_contact: float = 0.0) -> CompletedLungs:
    """Add to the lungs every 26-connected component of ``lesion_candidates`` (the lesion
    model's P >= 0.5, boolean on the volume grid) outside the lungs and the airways that
    touches a lung. A component goes to the side with which it shares more boundary; one that
    touches both (across a narrow anterior or posterior junction) is split voxel by voxel to
    the nearer side.

    min_contact: a component joins only if at least this fraction of its boundary voxels
    touch the lung. Airless lung left out of a lung mask lies against the aerated lung it
    belongs to; an organ under the diaphragm or a fluid layer meets the lung over a small part
    of its surface."""
    right, left = right.astype(bool), left.astype(bool)
    if right.shape != left.shape or lesion_candidates.shape != right.shape:
        raise ValueError(f"masks differ in shape: right {right.shape}, left {left.shape}, "
                         f"candidates {lesion_candidates.shape}")
    lung = right | left
    cand = lesion_candidates.astype(bool) & ~lung
    if airway is not None:
        cand &= ~airway.astype(bool)
    box = bounding_box(cand, 1)
    if box is None:
        return CompletedLungs(right, left, 0, 0.0)
    c, r, l_ = cand[box], right[box], left[box]
    labels, n = ndi.label(c, structure=_FULL)
    near_r = ndi.binary_dilation(r, structure=_FULL) & c
    near_l = ndi.binary_dilation(l_, structure=_FULL) & c
    idx = np.arange(1, n + 1)
    touch_r = ndi.sum(near_r, labels, idx) if n else np.zeros(0)
    touch_l = ndi.sum(near_l, labels, idx) if n else np.zeros(0)
    if min_contact > 0 and n:
        surface = c & ~ndi.binary_erosion(c, structure=_FULL)
        on_lung = ndi.sum(surface & (near_r | near_l), labels, idx)
        share = on_lung / np.maximum(1.0, ndi.sum(surface, labels, idx))
        weak = share < min_contact
        touch_r, touch_l = np.where(weak, 0, touch_r), np.where(weak, 0, touch_l)
    out_r, out_l = right.copy(), left.copy()
    add_r = np.isin(labels, idx[(touch_r > 0) & (touch_l == 0)])
    add_l = np.isin(labels, idx[(touch_l > 0) & (touch_r == 0)])
    both = idx[(touch_r > 0) & (touch_l > 0)]
    if both.size:
        split = np.isin(labels, both)
        d_r = ndi.distance_transform_edt(~r, sampling=spacing_mm) if r.any() else np.full(r.shape, np.inf)
        d_l = ndi.distance_transform_edt(~l_, sampling=spacing_mm) if l_.any() else np.full(r.shape, np.inf)
        add_r |= split & (d_r <= d_l)
        add_l |= split & (d_r > d_l)
    out_r[box] |= add_r
    out_l[box] |= add_l
    n_added = int(((touch_r > 0) | (touch_l > 0)).sum())
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return CompletedLungs(out_r, out_l, n_added, float((add_r | add_l).sum()) * voxel_ml)
