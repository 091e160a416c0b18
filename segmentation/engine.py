"""Segmentation entry point: lungs + lesions (+ lobes when available) -> Masks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from segmentation.hilum import VESSEL_TREE_ZONE_FRACTION, drop_hilar_components
from segmentation.lung_completion import complete_lungs
from segmentation.lesions_threshold import segment_lesions_threshold
from segmentation.lobes import segment_lobes
from segmentation.lungs import segment_lungs
from segmentation.types import Masks, Volume

ENGINES = ("threshold", "unet")
LUNG_ENGINES = ("net", "classical")


class EngineUnavailable(RuntimeError):
    """The requested lesion engine cannot run in this installation (bad input, no retry)."""


def check_engine(engine: str, device: str = "auto", lung_engine: str = "net") -> None:
    """Raise EngineUnavailable (or ValueError) unless ``engine`` and ``lung_engine`` can run here.

    For ``unet`` / ``net`` this loads the weights once (checksum verified) and picks the
    device, so a node with a corrupt weights file or ``device: cuda`` without a GPU stops at
    start-up.
    """
    if lung_engine not in LUNG_ENGINES:
        raise ValueError(f"unknown lung engine {lung_engine!r} (expected one of {LUNG_ENGINES})")
    if lung_engine == "net":
        from segmentation.lung_engine import DEFAULT_WEIGHTS as LUNG_WEIGHTS
        from segmentation.lung_engine import get_lung_engine

        if not LUNG_WEIGHTS.is_file():
            raise EngineUnavailable(f"analysis.lung_engine: no weights for lung engine 'net' at {LUNG_WEIGHTS}")
        try:
            get_lung_engine(None, device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise EngineUnavailable(f"analysis.lung_engine: lung engine 'net' cannot start: {exc}") from exc
    if engine not in ENGINES:
        raise ValueError(f"unknown lesion engine {engine!r} (expected one of {ENGINES})")
    if engine == "unet":
        from segmentation.unet_engine import DEFAULT_WEIGHTS, get_engine

        if not DEFAULT_WEIGHTS.is_file():
            raise EngineUnavailable(f"analysis.engine: no weights for engine 'unet' at {DEFAULT_WEIGHTS}")
        try:
            get_engine(None, device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise EngineUnavailable(f"analysis.engine: engine 'unet' cannot start: {exc}") from exc


# chosen on the validation cases and normal002 (model_card/candidates/cand_E.plan.md); with the
# shipped lesion model it keeps normal002's upper abdomen out (766 ml -> 65 ml added) but not
# painted pleural effusion, so the completion is off by default (cand_F.plan.md)
COMPLETION_MIN_CONTACT = 0.15


def segment(volume: Volume, engine: str = "threshold", device: str = "auto",
            lung_engine: str = "net", lesion_margin: bool = False, hilar_filter: bool = True,
            lung_completion: bool = False, hilar_vessel_trees: bool = False,
            harmonize_kernel: bool = False) -> Masks:
    """Segment lungs (left/right) and lesions of ``volume``.

    lung_engine: "net" (LungNet, segmentation.lung_engine; weights shipped in
        segmentation/weights) or "classical" (segmentation.lungs, thresholds and morphology:
        the documented fallback).

    engine: "unet" (COVID-Lesion Net, segmentation.unet_engine; weights shipped in
        segmentation/weights) or "threshold" (classical, segmentation.lesions_threshold).
    device: "auto" | "cpu" | "cuda" for the network; the threshold engine always uses the CPU.
    lesion_margin: with "unet", add the one-voxel ground-glass edge the network leaves out
        (segmentation.lesion_margin). Off by default: it fixes the phantom's GGO (-15% -> +0.5%)
        but is neutral on MedSeg and raises false-positive lesion on real normal lungs.
    hilar_filter: take out lesion components that are hilar vessels (dense, mostly within
        15 mm of the central bronchi of the traced airway tree; segmentation.hilum). Needs
        the airway tree (slices up to 3 mm); otherwise a note says it was not applied.
    hilar_vessel_trees: with the hilar filter, also take out dense components that reach the
        hilar zone (20% or more) and whose dense part is nowhere thicker than a lobar artery
        (segmentation.hilum, "vessel tree"). Off by default: it raises the COVID-CT-MD slice
        specificity but failed its decision rule on sensitivity
        (segmentation/model_card/candidates/vessel_shape.plan.md).
    harmonize_kernel: with "unet", when the aerated lung is noisier than any series the
        networks know (a sharp, lung-kernel reconstruction), give the lesion network the image
        smoothed in-plane to that noise (segmentation.harmonize); lungs, lobes and HU
        measures keep the stored HU. A note says when it was done. Off by default: on
        simulated sharp kernels it brings the lesion % back most of the way but failed its
        decision rule (segmentation/model_card/candidates/sharp_kernel.plan.md).
    lung_completion: with "unet", add to the lungs the lesion model's components outside the
        lung mask that touch it: the airless lung a lung mask leaves out
        (segmentation.lung_completion). A component joins only if at least
        COMPLETION_MIN_CONTACT of its surface lies on the lung (organs under the diaphragm and
        fluid layers touch it over a small part). A note says how many and how much. Lobes and
        lesions are then drawn on the completed lungs.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    check_engine(engine, device, lung_engine)
    if lung_engine == "net":
        from segmentation.lung_engine import segment_lungs_net

        lungs = segment_lungs_net(volume, device=device)
    else:
        lungs = segment_lungs(volume)
    lung = lungs.left | lungs.right
    notes_lesion_stage: list[str] = []
    if engine == "unet":
        from segmentation.unet_engine import get_engine

        lesion_input = volume
        if harmonize_kernel:
            from segmentation.harmonize import NOISE_REFERENCE_HU, harmonize_for_lesions

            harmonized = harmonize_for_lesions(volume.hu, lung)
            if harmonized.smoothed:
                lesion_input = replace(volume, hu=harmonized.hu)
                notes_lesion_stage.append(
                    f"high noise: aerated-lung noise {harmonized.noise_hu:.0f} HU (> "
                    f"{NOISE_REFERENCE_HU:g} HU, the noisiest series the lesion model knows); its "
                    f"input was smoothed in-plane (Gaussian {harmonized.sigma_px:g} px) to "
                    f"{harmonized.noise_after_hu:.0f} HU; HU measures use the stored image")
            del harmonized
        prob, box = get_engine(None, device).predict_proba(lesion_input, lung)
        del lesion_input
        lesion = np.zeros(lung.shape, bool)
        if prob.size:
            lesion[box] = prob >= 0.5
        del prob
        if lung_completion:
            done = complete_lungs(lungs.right, lungs.left, lesion, volume.spacing_mm, lungs.airway,
                                  min_contact=COMPLETION_MIN_CONTACT)
            if done.n_components:
                lungs = replace(lungs, right=done.right, left=done.left)
                lung = lungs.left | lungs.right
                notes_lesion_stage.append(
                    f"lung completion: {done.n_components} dense component(s) next to the lung mask "
                    f"({done.added_ml:.0f} ml) called lesion by the lesion model were added to the lung")
        lesion &= lung
        if lesion_margin:
            from segmentation.lesion_margin import grow_margin

            lesion = grow_margin(volume.hu, lesion, lung, volume.spacing_mm)
    else:
        lesion = segment_lesions_threshold(volume.hu, lung, volume.spacing_mm)
    lesion = lesion & lung
    lobes = segment_lobes(volume, lungs.left, lungs.right)
    low = sorted(key for key, level in lobes.confidence.items() if level != "high")
    notes = list(lungs.notes) + notes_lesion_stage + [f"lobes: {note}" for note in lobes.notes]
    if hilar_filter and lobes.hilum is None:
        notes.append("hilum: no airway tree traced, hilar vessels were not told apart from lesions")
    elif hilar_filter:
        hilar = drop_hilar_components(
            volume.hu, lesion, lobes.hilum, volume.spacing_mm,
            tree_fraction=VESSEL_TREE_ZONE_FRACTION if hilar_vessel_trees else None)
        lesion = hilar.lesion
        if hilar.n_components:
            notes.append(f"hilum: {hilar.n_components} dense lesion component(s) around the central "
                         f"bronchi ({hilar.removed_ml:.1f} ml) taken as hilar vessels, not lesion")
    if low:
        notes.append(
            "lobes with low confidence (boundary from the geometric fissure model): " + ", ".join(low)
        )
    return Masks(
        lung_left=lungs.left,
        lung_right=lungs.right,
        lesion=lesion,
        engine=engine,
        lung_engine=lung_engine,
        lobes=lobes.labels,
        lobe_confidence=dict(lobes.confidence),
        notes=notes,
    )
