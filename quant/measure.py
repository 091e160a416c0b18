"""Volume, percentage, score and HU-distribution measurements from a Volume and its Masks."""

from __future__ import annotations

import numpy as np

from quant.ct_score import ct_score_equivalent, involved_lobes, lobe_score
from quant.hu_distribution import hellinger_distance, histogram_iou, load_reference, lung_histogram
from quant.hu_split import split_lesion
from quant.involvement import classify_lesions
from quant.quality import assess
from quant.measurements import LobeMeasurement, Measurements, RegionMeasurement
from segmentation.types import LOBE_KEYS, Masks, Volume


def _pct(part_ml: float, whole_ml: float) -> float | None:
    return 100.0 * part_ml / whole_ml if whole_ml > 0 else None


def measure(volume: Volume, masks: Masks, ggo_min_hu: float = -750.0,
            consolidation_min_hu: float = -350.0, lobe_involvement_floor_pct: float = 0.1,
            split: tuple[np.ndarray, np.ndarray] | None = None) -> Measurements:
    """All measurements of one analysis; volumes in ml (cm^3), percents of the lung volume.

    ``split``: the (ggo, consolidation) masks if the caller already has them from
    quant.hu_split.split_lesion with the same thresholds; computed here otherwise.
    Values that cannot be computed are None and the reason is added to quality_flags.
    """
    flags: list[str] = []
    vml = volume.voxel_volume_ml
    lung = masks.lung
    lesion = masks.lesion & lung
    if split is None:
        split = split_lesion(volume.hu, lesion, ggo_min_hu, consolidation_min_hu)
    ggo, cons = split

    def ml(mask: np.ndarray) -> float:
        return float(np.count_nonzero(mask) * vml)

    lung_ml, lesion_ml, ggo_ml, cons_ml = ml(lung), ml(lesion), ml(ggo), ml(cons)
    if lung_ml == 0:
        flags.append("lung volume is zero: percentages, CT score equivalent and HU metrics not computed")
    lesion_pct = _pct(lesion_ml, lung_ml)

    regions = {}
    for key, region in (("left_lung", masks.lung_left), ("right_lung", masks.lung_right)):
        r_ml = ml(region)
        if r_ml == 0:
            flags.append(f"{key}: volume is zero, lesion_pct not computed")
        regions[key] = RegionMeasurement(
            volume_ml=r_ml, lesion_volume_ml=ml(lesion & region), ggo_volume_ml=ml(ggo & region),
            consolidation_volume_ml=ml(cons & region), lesion_pct=_pct(ml(lesion & region), r_ml))

    involvement = classify_lesions(volume.hu, lesion, volume.spacing_mm)
    counted = involvement.counted
    findings = assess(volume.hu, masks.lung_left, masks.lung_right, lesion, volume.spacing_mm,
                      consolidation_min_hu)

    lobes = None
    ct_score = None
    n_involved = None
    if masks.lobes is None:
        reason = masks.lobes_unavailable_reason or "lobes unavailable"
        flags.append(f"lobes, ct_score and involved_lobes not computed: {reason}")
    else:
        lobes = {}
        pcts = []
        lobe_map = np.asarray(masks.lobes)
        n_labels = max(int(lobe) for lobe in LOBE_KEYS) + 1
        # voxels per lobe label among the lesion and the counted voxels (their own voxels only)
        lesion_in = np.bincount(lobe_map[lesion], minlength=n_labels) * vml
        counted_in = np.bincount(lobe_map[counted], minlength=n_labels) * vml
        for lobe, key in LOBE_KEYS.items():
            l_ml = ml(lobe_map == int(lobe))
            lobe_lesion_ml = float(lesion_in[int(lobe)])
            pct = _pct(lobe_lesion_ml, l_ml)
            counted_pct = _pct(float(counted_in[int(lobe)]), l_ml)
            score = (None if counted_pct is None
                     else lobe_score(min(counted_pct, 100.0), lobe_involvement_floor_pct))
            if pct is None:
                flags.append(f"lobe {key}: volume is zero, score not computed")
            else:
                pcts.append(counted_pct)
            lobes[key] = LobeMeasurement(volume_ml=l_ml, lesion_volume_ml=lobe_lesion_ml,
                                         lesion_pct=pct, score=score,
                                         confidence=masks.lobe_confidence.get(key),
                                         involvement_pct=counted_pct)
        if all(v.score is not None for v in lobes.values()):
            ct_score = int(sum(v.score for v in lobes.values()))
        else:
            flags.append("ct_score not computed: a lobe has no volume")
        n_involved = involved_lobes(pcts, lobe_involvement_floor_pct)

    hellinger = iou = None
    hist = lung_histogram(volume.hu, lung) if lung_ml > 0 else None
    if hist is not None:
        try:
            ref = load_reference()
        except (OSError, ValueError, KeyError) as exc:
            flags.append(f"HU-distribution metrics not computed: reference unavailable ({exc})")
        else:
            hellinger = hellinger_distance(hist, ref.probabilities)
            iou = histogram_iou(hist, ref.probabilities)

    return Measurements(
        lung_volume_ml=lung_ml, lesion_volume_ml=lesion_ml, ggo_volume_ml=ggo_ml,
        consolidation_volume_ml=cons_ml, lesion_pct=lesion_pct,
        ggo_pct=_pct(ggo_ml, lung_ml), consolidation_pct=_pct(cons_ml, lung_ml),
        ct_score=ct_score,
        ct_score_equivalent=None if lesion_pct is None else ct_score_equivalent(lesion_pct),
        involved_lobes=n_involved, hellinger_distance=hellinger, iou_vs_reference=iou,
        regions=regions, lobes=lobes, engine=masks.engine,
        quality_flags=(flags + [f"{f.code.value}: {f.message}" for f in findings]
                       + _excluded_notes(involvement)
                       + [f"segmentation: {n}" for n in masks.notes]),
        ggo_min_hu=ggo_min_hu, consolidation_min_hu=consolidation_min_hu,
        quality_findings=findings, excluded_lesions=involvement.excluded)


def _excluded_notes(involvement) -> list[str]:
    """One remark per kind of lesion component left out of the involvement decision."""
    notes = [f"involvement: {n}" for n in involvement.notes]
    by_kind: dict[str, list] = {}
    for c in involvement.excluded:
        by_kind.setdefault(c.kind, []).append(c)
    for kind in ("nodule", "calcified", "small_focus", "speck"):
        items = by_kind.get(kind, [])
        if items:
            total = sum(c.volume_ml for c in items)
            largest = max(c.equivalent_diameter_mm for c in items)
            notes.append(f"involvement: {len(items)} {kind} component(s) ({total:.2f} ml, up to "
                         f"{largest:.0f} mm) not counted toward lobe scores")
    return notes
