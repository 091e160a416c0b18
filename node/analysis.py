"""The analysis pipeline for one series: DICOM files in, SEGs, SR, PDF report, summary and
overlay captures and measurements.json out.

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
from node.config import AnalysisSettings, Settings
from node.outputs import documents, render
from node.outputs.codes import SEG_GROUPS
from node.outputs.seg import SEG_TRANSFER_SYNTAX, build_segs
from node.outputs.sr import build_sr
from node.outputs.sr import sr_uids as planned_sr_uids
from node.spool import write_atomically
from node.volume import load_series
from node.store import PatientScan
from node.worker import OutputError
from quant.course import Course, build_course, scan_from_measurements
from quant.hu_split import split_lesion
from quant.measure import measure
from quant.measurements import Measurements
from segmentation.engine import segment
from segmentation.types import Masks, Volume

log = logging.getLogger(__name__)

SEG_FILENAME = "seg.dcm"            # the lesions SEG (a contract); the others beside it
SEG_FILENAMES = {group.name: group.filename for group in SEG_GROUPS}
SR_FILENAME = "sr.dcm"
PDF_FILENAME = "report.dcm"         # Encapsulated PDF; report.pdf beside it is the same PDF
PDF_DOCUMENT_FILENAME = "report.pdf"
SUMMARY_FILENAME = "summary.dcm"
OVERLAY_FILENAME = "overlay_{:04d}.dcm"
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



def segment_configured(volume: Volume, analysis: AnalysisSettings) -> Masks:
    """segmentation.engine.segment with the analysis settings of the config: what the node,
    `lungnode analyze` and `lungnode evaluate slices` run."""
    return segment(volume, engine=analysis.engine, device=analysis.device,
                   lung_engine=analysis.lung_engine, lesion_margin=analysis.lesion_margin,
                   hilar_filter=analysis.hilar_filter, hilar_vessel_trees=analysis.hilar_vessel_trees,
                   harmonize_kernel=analysis.harmonize_kernel,
                   lung_completion=analysis.lung_completion)

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
    masks = segment_configured(series.volume, analysis)
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
    o = settings.outputs
    with _output_step("DICOM-SEG"):
        segs = build_segs(
            series,
            masks,
            ggo,
            consolidation,
            series_numbers={"lesions": o.seg_series_number, "lungs": o.seg_lungs_series_number,
                            "lobes": o.seg_lobes_series_number},
            revision=revision,
            software_version=__version__,
        )
    if o.seg:
        with _output_step("DICOM-SEG"):
            for name, seg in segs.items():
                output_files.append(_write_dataset(out_dir / SEG_FILENAMES[name], seg,
                                                   transfer_syntax=SEG_TRANSFER_SYNTAX))
    with _output_step("patient course"):
        course, patient_scan, course_note = _patient_course(
            series, measurements, segs["lesions"], revision, settings, earlier_scans)
    if o.sr:
        with _output_step("SR"):
            sr = build_sr(
                series,
                segs,
                measurements,
                series_number=o.sr_series_number,
                revision=revision,
                software_version=__version__,
                predecessor=predecessor_sr,
                course=course,
            )
            output_files.append(_write_dataset(out_dir / SR_FILENAME, sr))
        sr_uids = (sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPInstanceUID)
    if o.pdf or o.summary or o.overlay:
        say("rendering the report and the overlay")
        with _output_step("PDF report, summary and overlay"):
            output_files += _write_pictures(series, masks, ggo, consolidation, measurements,
                                            out_dir, settings, revision, course)
    del ggo, consolidation
    lap("encode_s")

    document = measurements.to_json_dict()
    document.update(
        {
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series_uid,
            "revision": revision,
            "software_version": __version__,
            "seg_sop_instance_uid": segs["lesions"].SOPInstanceUID,
            "seg_sop_instance_uids": {name: seg.SOPInstanceUID for name, seg in segs.items()},
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


def _write_pictures(series, masks, ggo, consolidation, measurements, out_dir: Path,
                    settings: Settings, revision: int, course=None) -> list[Path]:
    """The PDF report, its summary capture and the overlay series (as enabled)."""
    o = settings.outputs
    hu = series.volume.hu
    lobes = masks.lobes

    def slice_rgb(k: int):
        return render.overlay_rgb(hu[k], ggo[k], consolidation[k],
                                  None if lobes is None else lobes[k])

    written: list[Path] = []
    if o.pdf or o.summary:
        lesion_per_slice = (ggo | consolidation).sum(axis=(1, 2))
        lung_per_slice = (masks.lung_left | masks.lung_right).sum(axis=(1, 2))
        keys = render.key_slices(lesion_per_slice, lung_per_slice)
        n = hu.shape[0]
        page = render.render_report(
            measurements,
            title="Lung CT quantification (lungnode)",
            subtitle=_subtitle(series),
            slices=[(_slice_caption(series, k, n), slice_rgb(k)) for k in keys],
            course=course,
        )
        if o.pdf:
            write_atomically(out_dir / PDF_DOCUMENT_FILENAME, page.pdf)
            ds = documents.build_pdf(series, page.pdf, series_number=o.pdf_series_number,
                                     revision=revision, software_version=__version__)
            written.append(_write_dataset(out_dir / PDF_FILENAME, ds))
        if o.summary:
            ds = documents.build_summary(series, page.rgb, series_number=o.summary_series_number,
                                         revision=revision, software_version=__version__)
            written.append(_write_dataset(out_dir / SUMMARY_FILENAME, ds))
    if o.overlay:
        images = (slice_rgb(k) for k in range(hu.shape[0]))
        for k, ds in enumerate(documents.build_overlay(
                series, images, series_number=o.overlay_series_number, revision=revision,
                software_version=__version__)):
            written.append(_write_dataset(out_dir / OVERLAY_FILENAME.format(k + 1), ds))
    return written


def _slice_caption(series, z: int, n: int) -> str:
    """A key slice by the source image a reader finds it as (its Instance Number)."""
    sources = documents.source_slice_of_canonical(series)
    if sources is not None:
        number = series.source_datasets[sources[z]].get("InstanceNumber", None)
        if number not in (None, ""):
            return f"image {int(number)} of {n}"
    return f"axial slice {z + 1} of {n} (feet to head)"


def _subtitle(series) -> str:
    """Study date and series description only: no patient name or ID on the page header
    (the DICOM header carries them; the page may be printed or forwarded)."""
    first = series.source_datasets[0]
    date = str(first.get("StudyDate", "") or "")
    when = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else "date unknown"
    description = str(first.get("SeriesDescription", "") or "").strip() or "CT series"
    thickness = first.get("SliceThickness", None)
    extra = f", {float(thickness):g} mm slices" if thickness not in (None, "") else ""
    return (f"Study of {when}; series \"{description}\" ({len(series.source_datasets)} slices"
            f"{extra}); series number {first.get('SeriesNumber', '-')}")


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


def _write_dataset(path: Path, dataset, transfer_syntax=None) -> Path:
    from io import BytesIO

    if transfer_syntax is not None:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    write_atomically(path, buffer.getvalue())
    return path
