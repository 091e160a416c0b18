"""The analysis pipeline for one series: DICOM files in, SEG + SR + measurements.json out.

Used by the node's worker and by ``lungnode analyze``. Stages:
node.volume (decode, check geometry) -> segmentation (lungs, lesions) -> quant (measurements)
-> node.outputs (DICOM-SEG, TID 1500 SR). Bad input raises node.volume.VolumeError (no retry,
nothing partial is written); an output that cannot be encoded or written raises
node.worker.OutputError with the reason (the job fails, no retry); anything else is a bug and
propagates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node import __version__
from node.config import Settings
from node.outputs.seg import build_seg
from node.outputs.sr import build_sr
from node.spool import write_atomically
from node.volume import load_series
from node.worker import OutputError
from quant.hu_split import split_lesion
from quant.measure import measure
from quant.measurements import Measurements
from segmentation.engine import segment

log = logging.getLogger(__name__)

SEG_FILENAME = "seg.dcm"
SR_FILENAME = "sr.dcm"
MEASUREMENTS_FILENAME = "measurements.json"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AnalysisOutput:
    """What one analysis wrote. ``output_files`` are the DICOM objects to deliver, in order."""

    output_files: list[Path]
    sr_uids: tuple[str, str, str] | None  # (study, series, SOP instance) of the SR
    measurements_json: Path
    measurements: Measurements
    study_instance_uid: str
    series_instance_uid: str
    revision: int
    timings_s: dict[str, float]


def analyze_series(
    paths: Sequence[Path],
    out_dir: Path,
    settings: Settings,
    *,
    revision: int = 1,
    predecessor_sr: tuple[str, str, str] | None = None,
    progress: Progress | None = None,
) -> AnalysisOutput:
    """Analyse the CT series made of ``paths`` and write its outputs into ``out_dir``."""
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    say(f"loading {len(paths)} files")
    series = load_series(paths)
    lap("load_s")
    series_uid = series.series_instance_uid
    shape = series.volume.hu.shape
    say(f"segmenting {shape[0]} slices of {shape[1]}x{shape[2]} ({settings.analysis.engine} engine)")
    log.info("series %s rev %d: %d slices loaded", series_uid, revision, shape[0])

    analysis = settings.analysis
    masks = segment(series.volume, engine=analysis.engine, device=analysis.device,
                    lung_engine=analysis.lung_engine)
    lap("segment_s")
    ggo, consolidation = split_lesion(
        series.volume.hu, masks.lesion, analysis.ggo_min_hu, analysis.consolidation_min_hu
    )
    say("measuring")
    measurements = measure(
        series.volume,
        masks,
        ggo_min_hu=analysis.ggo_min_hu,
        consolidation_min_hu=analysis.consolidation_min_hu,
        lobe_involvement_floor_pct=analysis.lobe_involvement_floor_pct,
        split=(ggo, consolidation),
    )
    lap("measure_s")

    out_dir.mkdir(parents=True, exist_ok=True)
    output_files: list[Path] = []
    sr_uids: tuple[str, str, str] | None = None
    say("encoding DICOM-SEG and SR")
    with _output_step("DICOM-SEG"):
        seg = build_seg(
            series,
            masks,
            ggo,
            consolidation,
            series_number=settings.outputs.seg_series_number,
            revision=revision,
            software_version=__version__,
        )
    del ggo, consolidation
    if settings.outputs.seg:
        with _output_step("DICOM-SEG"):
            output_files.append(_write_dataset(out_dir / SEG_FILENAME, seg))
    if settings.outputs.sr:
        with _output_step("SR"):
            sr = build_sr(
                series,
                seg,
                measurements,
                series_number=settings.outputs.sr_series_number,
                revision=revision,
                software_version=__version__,
                predecessor=predecessor_sr,
            )
            output_files.append(_write_dataset(out_dir / SR_FILENAME, sr))
        sr_uids = (sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    lap("encode_s")

    document = measurements.to_json_dict()
    document.update(
        {
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series_uid,
            "revision": revision,
            "software_version": __version__,
            "seg_sop_instance_uid": seg.SOPInstanceUID,
            "sr_sop_instance_uid": sr_uids[2] if sr_uids else None,
            "timings_s": timings,
        }
    )
    measurements_json = out_dir / MEASUREMENTS_FILENAME
    write_atomically(measurements_json, json.dumps(document, indent=2).encode("utf-8"))
    log.info(
        "series %s rev %d: analysed (lung %.1f ml, lesions %.1f ml) in %.1f s",
        series_uid,
        revision,
        measurements.lung_volume_ml,
        measurements.lesion_volume_ml,
        sum(timings.values()),
    )
    return AnalysisOutput(
        output_files=output_files,
        sr_uids=sr_uids,
        measurements_json=measurements_json,
        measurements=measurements,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series_uid,
        revision=revision,
        timings_s=timings,
    )


@contextlib.contextmanager
def _output_step(what: str):
    """Encoding or writing ``what`` failed: an OutputError naming it and the cause."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"cannot encode or write the {what}: {exc}") from exc


def _write_dataset(path: Path, dataset) -> Path:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_atomically(path, buffer.getvalue())
    return path
