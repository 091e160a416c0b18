"""The report as DICOM objects every viewer shows, in the CT's study:

* ``build_pdf``: Encapsulated PDF Storage (Modality DOC) holding the one-page report;
* ``build_summary``: the same page as one RGB Secondary Capture image;
* ``build_overlay``: an RGB Secondary Capture series, one image per axial slice of the source
  on the canonical grid (feet to head, patient's left on the image right, anterior up, the
  way radiologists read axial slices, whatever the source orientation), each referencing the
  source slice it shows, GGO and consolidation coloured and the lobe borders drawn,
  for PACS and viewers that do not show DICOM-SEG.

Secondary captures are written JPEG-LS Lossless (no colour loss on lesion edges or text;
OHIF, Weasis, 3D Slicer and dcmtk decode it). Measured on a 512x512 overlay slice of
LIDC-IDRI-0001: 786 KB raw, 612 KB RLE Lossless, 269 KB JPEG-LS Lossless, 74 KB JPEG
baseline (lossy, not used). UIDs are derived from the source series, revision and version, so
a resend after a crash replaces rather than duplicates.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from collections.abc import Iterable

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, JPEGLSLossless

from node.outputs.header import copy_patient_study, with_type2
from node.outputs.seg import MANUFACTURER, MODEL_NAME
from node.uids import derive_uid
from node.volume import LoadedSeries

logger = logging.getLogger(__name__)

PDF_SERIES_DESCRIPTION = "Lung quantification report, PDF (lungnode)"
SUMMARY_SERIES_DESCRIPTION = "Lung quantification summary (lungnode)"
OVERLAY_SERIES_DESCRIPTION = "Lesions overlay: GGO yellow, consolidation red (lungnode)"
DOCUMENT_TITLE = "Lung quantification report (lungnode)"
SC_TRANSFER_SYNTAX = JPEGLSLossless


def output_uids(series: LoadedSeries, revision: int, software_version: str, kind: str,
                instance: int = 1) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of one document output."""
    parts = (series.series_instance_uid, revision, software_version, kind)
    return derive_uid(*parts, "series"), derive_uid(*parts, "instance", instance)


def _now() -> tuple[str, str]:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def build_pdf(series: LoadedSeries, pdf: bytes, *, series_number: int, revision: int,
              software_version: str) -> Dataset:
    """An Encapsulated PDF instance (PS3.3 A.45.1) in the source's study."""
    if not pdf.startswith(b"%PDF"):
        raise ValueError("not a PDF document")
    source = with_type2(series.source_datasets[0])
    series_uid, sop_uid = output_uids(series, revision, software_version, "PDF")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_uid
    copy_patient_study(source, ds)
    date, time = _now()
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = PDF_SERIES_DESCRIPTION
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = software_version
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.SourceInstanceSequence = [_reference(series.source_datasets[0])]
    logger.info("series %s: PDF report %s (%d bytes)", series.series_instance_uid, sop_uid,
                len(pdf))
    return ds


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _sc(series: LoadedSeries, rgb: np.ndarray, *, kind: str, instance: int, series_number: int,
        revision: int, software_version: str, description: str,
        pixel_spacing: tuple[float, float] | None, orientation: tuple[str, str] | None,
        source_index: int | None = 0) -> Dataset:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"an RGB uint8 image is needed, got {rgb.dtype} {rgb.shape}")
    series_uid, sop_uid = output_uids(series, revision, software_version, kind, instance)
    source = with_type2(series.source_datasets[0])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance,
        manufacturer=MANUFACTURER,
        pixel_spacing=pixel_spacing,
        patient_orientation=orientation or ("L", "P"),
        transfer_syntax_uid=SC_TRANSFER_SYNTAX,
    )
    sc.SeriesDescription = description
    sc.ManufacturerModelName = MODEL_NAME
    sc.SoftwareVersions = software_version
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = None  # Type 2C in General Series: a chest CT is not of one side
    if source_index is not None:
        sc.SourceImageSequence = [_reference(series.source_datasets[source_index])]
    return sc


def build_summary(series: LoadedSeries, rgb: np.ndarray, *, series_number: int, revision: int,
                  software_version: str) -> Dataset:
    """The one-page report as an RGB Secondary Capture image."""
    sc = _sc(series, rgb, kind="SUMMARY", instance=1, series_number=series_number,
             revision=revision, software_version=software_version,
             description=SUMMARY_SERIES_DESCRIPTION, pixel_spacing=None, orientation=None)
    sc.ImageType = ["DERIVED", "SECONDARY", "REPORT"]
    return sc


def source_slice_of_canonical(series: LoadedSeries) -> list[int] | None:
    """For each canonical axial slice z, the source slice k it is (the stack may run either
    way along the patient axis); None when the source slices are not axial (a sagittal or
    coronal stack): an axial overlay slice then has no one source image."""
    nz = series.volume.hu.shape[0]
    index = np.broadcast_to(np.arange(nz, dtype=np.int32)[:, None, None], series.volume.hu.shape)
    on_source = series.to_source(index)
    per_slice = on_source.reshape(on_source.shape[0], -1)
    if not np.all(per_slice == per_slice[:, :1]):
        return None
    out = [0] * nz
    for k, z in enumerate(per_slice[:, 0]):
        out[int(z)] = k
    return out


def build_overlay(series: LoadedSeries, images: Iterable[np.ndarray], *, series_number: int,
                  revision: int, software_version: str) -> Iterable[Dataset]:
    """One RGB Secondary Capture per source slice, in slice order (a generator: one image in
    memory at a time). ``images[k]`` is slice k of the LoadedSeries.

    The first image is built by highdicom; every later one is a copy of it with its own
    SOP Instance UID, Instance Number, source reference, comment and pixel data (encoded by
    highdicom's ``encode_frame``), since nothing else differs between the images of the
    series but the creation times, which are the first image's for all. On LIDC-IDRI-0001
    (benchmarks/kernels.py, 2026-12-03) highdicom took 17.3 ms an image with its encoding, the
    copy 0.9 ms plus 10.1 ms of encoding: ~1.9 s less over 300 slices."""
    spacing = series.volume.spacing_mm  # (z, y, x); PixelSpacing is (between rows, columns)
    pixel_spacing = (float(spacing[1]), float(spacing[2]))
    sources = source_slice_of_canonical(series)
    template: Dataset | None = None
    for k, rgb in enumerate(images):
        if template is None:
            sc = _sc(series, rgb, kind="OVERLAY", instance=k + 1, series_number=series_number,
                     revision=revision, software_version=software_version,
                     description=OVERLAY_SERIES_DESCRIPTION, pixel_spacing=pixel_spacing,
                     orientation=("L", "P"), source_index=sources[k] if sources else None)
            sc.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        else:
            sc = _next_overlay(template, series, rgb, k, revision, software_version)
            if sources:
                sc.SourceImageSequence = [_reference(series.source_datasets[sources[k]])]
        sc.ImageComments = f"source slice {k + 1} of {len(series.source_datasets)}"
        if template is None:
            template = copy.deepcopy(sc)   # the caller may change the image it is given
        yield sc


def _next_overlay(template: Dataset, series: LoadedSeries, rgb: np.ndarray, k: int,
                  revision: int, software_version: str) -> Dataset:
    """Overlay image k (0-based) as a copy of the series' first image."""
    if rgb.dtype != np.uint8 or rgb.shape != (template.Rows, template.Columns, 3):
        raise ValueError(f"overlay slice {k + 1}: an RGB uint8 image of "
                         f"{template.Rows} x {template.Columns} is needed, got {rgb.dtype} {rgb.shape}")
    _, sop_uid = output_uids(series, revision, software_version, "OVERLAY", k + 1)
    sc = copy.deepcopy(template)
    sc.SOPInstanceUID = sop_uid
    sc.file_meta.MediaStorageSOPInstanceUID = sop_uid
    sc.InstanceNumber = k + 1
    frame = hd.frame.encode_frame(
        rgb, transfer_syntax_uid=template.file_meta.TransferSyntaxUID, bits_allocated=8,
        bits_stored=8, photometric_interpretation=template.PhotometricInterpretation,
        pixel_representation=0, planar_configuration=template.get("PlanarConfiguration"))
    sc.PixelData = encapsulate([frame])
    return sc
