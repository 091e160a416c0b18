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
from node.outputs.sr import build_sr, sr_uids as planned_sr_uids
from node.spool import write_atomically
from node.volume import load_series
from node.store import PatientScan
from node.worker import OutputError
from quant.course import Course, build_course, scan_from_measurements
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
    patient_scan: PatientScan | None = None   # for the state store (the patient's course)
    course: Course | None = None


EarlierScans = Callable[[str, str], Sequence[PatientScan]]


def analyze_series(
    paths: Sequence[Path],
    out_dir: Path,
    settings: Settings,
    *,
    revision: int = 1,
    predecessor_sr: tuple[str, str, str] | None = None,
    progress: Progress | None = None,
    earlier_scans: EarlierScans | None = None,
) -> AnalysisOutput:
    """Analyse the CT series made of ``paths`` and write its outputs into ``out_dir``.

    earlier_scans(patient_id, issuer_of_patient_id): the patient's stored scans (the node's
    state store); with it the outputs carry the patient's course (issue 9) and the result
    holds the PatientScan to store. Without it (``lungnode analyze``) there is no course."""
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
    masks = segment(series.volume, engine=analysis.engine, device=analysis.device)
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
    with _output_step("patient course"):
        course, patient_scan, course_note = _patient_course(
            series, measurements, seg, revision, settings, earlier_scans)
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
                course=course,
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
            "course": course.to_json_dict() if course is not None else {"note": course_note},
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
        patient_scan=patient_scan,
        course=course,
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


def _patient_course(series, measurements: Measurements, seg, revision: int, settings: Settings,
                    earlier_scans: EarlierScans | None):
    """(course, PatientScan to store, note when there is no course)."""
    from node.course import course_scan, scan_identity

    if earlier_scans is None:
        return None, None, "analysed outside the node: no state store, no course"
    if not settings.course.enabled:
        return None, None, "course.enabled is false"
    identity, why_not = scan_identity(series.source_datasets[0])
    if identity is None:
        log.info("series %s: no course: %s", series.series_instance_uid, why_not)
        return None, None, why_not
    sr_series, sr_sop = planned_sr_uids(series, revision, __version__)
    sr = (series.study_instance_uid, sr_series, sr_sop) if settings.outputs.sr else None
    seg_uids = (str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)) if settings.outputs.seg else None
    document = measurements.to_json_dict()
    current = scan_from_measurements(
        document, study_uid=series.study_instance_uid, series_uid=series.series_instance_uid,
        acquired_at=identity.acquired_at, sr_uids=sr, seg_uids=seg_uids)
    earlier = [course_scan(r) for r in earlier_scans(identity.patient_id,
                                                     identity.issuer_of_patient_id)]
    course = build_course(current, earlier,
                          stable_relative_pct=settings.course.stable_relative_pct,
                          stable_absolute_ml=settings.course.stable_absolute_ml)
    log.info("series %s: scan %d of %d in the patient's course (trend %s)",
             series.series_instance_uid, course.current_index + 1, len(course.scans), course.trend)
    record = PatientScan(
        series_uid=series.series_instance_uid, revision=revision,
        study_uid=series.study_instance_uid, patient_id=identity.patient_id,
        issuer_of_patient_id=identity.issuer_of_patient_id,
        acquired_at=identity.acquired_at.timestamp(),
        measurements_json=json.dumps(document), sr_uids=sr, seg_uids=seg_uids,
        recorded_at=time.time())
    return course, record, None


def _write_dataset(path: Path, dataset) -> Path:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_atomically(path, buffer.getvalue())
    return path
