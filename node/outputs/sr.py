"""TID 1500 Measurement Report (Comprehensive 3D SR) of lung, lesion and lobe measurements.

Content tree (PS3.16 TID 1500, built with highdicom templates):

* Observation context: a device observer (lungnode, manufacturer "lungnode project").
* Procedure reported: SCT 169069000 "CT of chest".
* Imaging Measurements, one group per SEG segment (TID 1411 Volumetric ROI Measurements,
  each referencing its segment in the SEG of its group (lesions, lungs or lobes: the
  ``segs`` mapping) via Referenced Segment and carrying the segment's tracking identifier):
    - left / right lung: Volume, lesion / GGO / consolidation volume (ml), lesion percent;
    - ground-glass opacity, consolidation: Volume (ml), percent of lung volume (%);
    - lobes (only when the SEG has lobe segments and Measurements.lobes is given): Volume,
      lesion volume (ml), lesion percent (%), lobe score (0-5, "{score}").
  plus one whole-lung group (TID 1501, finding site Lung): lung volume, lesion / GGO /
  consolidation volumes and percents, CT severity score (0-25), the score equivalent from
  the lesion percent, number of involved lobes, Hellinger distance and IoU vs reference.
  Volumes use SCT 118565006 "Volume" with method DCM 126030 "Sum of segmented voxel method
  for volume" when the region is the segment itself; the other quantities use private codes
  of scheme 99LUNGNODE (declared in the Coding Scheme Identification Sequence) because
  DICOM defines no concept for them; see :mod:`node.outputs.codes` for every code.
* A value that could not be computed (None) is never written as 0: its NUM item is left
  out and a TEXT item "Measurement not computed" names it (the reason is in the quality
  remarks). PS3.3 C.18.1 would also allow a NUM with an empty Measured Value Sequence and
  Numeric Value Qualifier DCM 114007 "Measurement not attempted", but highdicom 0.28 cannot
  read such an item back (NumContentItem.from_dataset indexes MeasuredValueSequence[0]), so
  any highdicom-based consumer, including Comprehensive3DSR itself, would fail on it.
* Qualitative Evaluations (UMLS C0034375) container at the root: TEXT items "Quality
  remark" for every quality flag, lobe confidence and the lesion engine.

Every NUM value is rounded as a radiologist reads it (node.outputs.rounding). New groups
(e.g. a comparison with a prior study) are added as further entries of the imaging
measurements list built in ``build_sr``.

When ``predecessor`` is given, the document amends it: Predecessor Documents Sequence
references it and the Series Description says "amended".

When ``course`` (quant.course.Course) has a prior scan, :func:`course_content` adds the
comparison (issue 9): one TID 1501 group "Change since prior: whole lung" and one per lobe,
each with a Time Point Context (TID 1502: the scan's date and its order in the course), the
value at the prior, the change and the relative change of every measure (codes in
node.outputs.course_codes), the days since the prior, the trends as qualitative
evaluations, and COMPOSITE references to the prior's SR and SEG; those two are listed in
the Pertinent Other Evidence Sequence with the prior's study. The plain-language summary
is a TEXT item "Course summary" in the Qualitative Evaluations container.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from node.outputs import codes as lc
from node.outputs.header import patient_study_reference
from node.outputs.rounding import rounded
from node.outputs.seg import AI_ENGINES, MANUFACTURER, MODEL_NAME, segment_tracking_uid
from node.uids import derive_uid
from node.volume import LoadedSeries
from quant.measurements import Measurements

logger = logging.getLogger(__name__)

SERIES_DESCRIPTION = "Lung quantification report (lungnode)"
SERIES_DESCRIPTION_AMENDED = "Lung quantification report, amended (lungnode)"
DEVICE_OBSERVER_UID = derive_uid("lungnode", "device observer")

Number = float | int | None


def sr_uids(series: LoadedSeries, revision: int, software_version: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR for this series/revision/version."""
    parts = (series.series_instance_uid, revision, software_version, "SR")
    return derive_uid(*parts, "series"), derive_uid(*parts, "instance")


def build_sr(
    series: LoadedSeries,
    segs: Mapping[str, Dataset],
    measurements: Measurements,
    *,
    series_number: int,
    revision: int,
    software_version: str,
    predecessor: tuple[str, str, str] | None = None,
    course=None,
) -> Dataset:
    """Build the TID 1500 Comprehensive 3D SR for ``series`` referencing the segments of
    ``segs`` ({"lesions": SEG, "lungs": SEG, "lobes": SEG}, node.outputs.seg.build_segs):
    each measurement group references its segment in the SEG of that segment's group.

    course: the patient's course (quant.course.Course) or None; see course_content.

    predecessor: (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of the earlier SR of
        the same source series that this one amends, or None.
    """
    for name, seg in segs.items():
        if str(seg.SOPClassUID) != SegmentationStorage:
            raise ValueError(f"the {name} SEG is not a Segmentation (SOP class {seg.SOPClassUID})")
        if str(seg.StudyInstanceUID) != series.study_instance_uid:
            raise ValueError(f"the {name} SEG belongs to another study than the series")
    series_uid, sop_uid = sr_uids(series, revision, software_version)
    if predecessor is not None and predecessor[2] == sop_uid:
        raise ValueError("an SR cannot amend itself: bump the revision for an amendment")

    algorithm = hd.sr.AlgorithmIdentification(
        name=f"lungnode {measurements.engine}",
        version=software_version,
        parameters=[f"ggo_min_hu={measurements.ggo_min_hu:g}",
                    f"consolidation_min_hu={measurements.consolidation_min_hu:g}"],
        family=(codes.cid7162.ArtificialIntelligence if measurements.engine in AI_ENGINES
                else codes.cid7162.MorphologicalOperations),
    )
    not_computed: list[str] = []
    groups: list = [_whole_lung_group(series, measurements, algorithm, not_computed)]
    for spec in lc.SEGMENTS + lc.LOBE_SEGMENTS:
        seg = segs.get(spec.group)
        if seg is None or spec.number not in {int(i.SegmentNumber) for i in seg.SegmentSequence}:
            continue
        values = _segment_values(spec.key, measurements)
        if values is None:
            continue
        groups.append(_segment_group(series, seg, spec, values, algorithm, not_computed))
    course_groups, course_evidence, course_remarks = course_content(series, course, algorithm)
    groups += course_groups

    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID,
            name="lungnode",
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=lc.CT_OF_CHEST,
        imaging_measurements=groups,
    )
    remarks = _remarks(measurements, predecessor, not_computed) + course_remarks
    if remarks:
        container = hd.sr.ContainerContentItem(
            name=lc.QUALITATIVE_EVALUATIONS,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        container.ContentSequence = hd.sr.ContentSequence([
            hd.sr.TextContentItem(name=name, value=text,
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            for name, text in remarks
        ])
        report[0].ContentSequence.append(container)

    previous = None
    if predecessor is not None:
        pre = Dataset()
        pre.StudyInstanceUID, pre.SeriesInstanceUID, pre.SOPInstanceUID = predecessor
        pre.SOPClassUID = Comprehensive3DSRStorage
        previous = [pre]

    sr = hd.sr.Comprehensive3DSR(
        evidence=[*patient_study_reference(series.source_datasets), *segs.values(), *course_evidence],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=False,
        previous_versions=previous,
    )
    sr.SeriesDescription = SERIES_DESCRIPTION_AMENDED if predecessor else SERIES_DESCRIPTION
    sr.ManufacturerModelName = MODEL_NAME
    sr.SoftwareVersions = software_version
    scheme = Dataset()
    scheme.CodingSchemeDesignator = lc.PRIVATE_SCHEME
    scheme.CodingSchemeUID = lc.PRIVATE_SCHEME_UID
    scheme.CodingSchemeName = lc.PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    logger.info("series %s: SR %s with %d measurement groups%s", series.series_instance_uid,
                sop_uid, len(groups), " (amends %s)" % predecessor[2] if predecessor else "")
    return sr


# --- groups ----------------------------------------------------------------------------------


def _segment_values(key: str, m: Measurements) -> list[tuple[object, Number, object, bool]] | None:
    """(concept, value, unit, is_segment_volume) rows for one segment, None to skip it."""
    if key in m.regions:
        r = m.regions[key]
        return [
            (lc.VOLUME, r.volume_ml, lc.UNIT_ML, True),
            (lc.LESION_VOLUME, r.lesion_volume_ml, lc.UNIT_ML, False),
            (lc.GGO_VOLUME, r.ggo_volume_ml, lc.UNIT_ML, False),
            (lc.CONSOLIDATION_VOLUME, r.consolidation_volume_ml, lc.UNIT_ML, False),
            (lc.LESION_PERCENT, r.lesion_pct, lc.UNIT_PERCENT, False),
        ]
    if key == "ggo":
        return [(lc.VOLUME, m.ggo_volume_ml, lc.UNIT_ML, True),
                (lc.PERCENT_OF_LUNG, m.ggo_pct, lc.UNIT_PERCENT, False)]
    if key == "consolidation":
        return [(lc.VOLUME, m.consolidation_volume_ml, lc.UNIT_ML, True),
                (lc.PERCENT_OF_LUNG, m.consolidation_pct, lc.UNIT_PERCENT, False)]
    if m.lobes is not None and key in m.lobes:
        lobe = m.lobes[key]
        return [
            (lc.VOLUME, lobe.volume_ml, lc.UNIT_ML, True),
            (lc.LESION_VOLUME, lobe.lesion_volume_ml, lc.UNIT_ML, False),
            (lc.LESION_PERCENT, lobe.lesion_pct, lc.UNIT_PERCENT, False),
            (lc.LOBE_SCORE, lobe.score, lc.UNIT_SCORE, False),
        ]
    return None


def _segment_group(series: LoadedSeries, seg: Dataset, spec: lc.SegmentSpec, values: list,
                   algorithm: hd.sr.AlgorithmIdentification, not_computed: list[str]):
    finding_site = None
    if spec.category == lc.ANATOMICAL_STRUCTURE:
        finding_site = [hd.sr.FindingSite(spec.property_type, laterality=spec.modifier)]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=segment_tracking_uid(series, spec.key), identifier=spec.label),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=spec.number,
            source_series=hd.sr.SourceSeriesForSegmentation(series.series_instance_uid),
        ),
        finding_type=spec.property_type,
        finding_category=spec.category,
        finding_sites=finding_site,
        algorithm_id=algorithm,
        measurements=_measurements(
            [(name, value, unit, lc.SUM_OF_VOXELS if is_volume else None)
             for name, value, unit, is_volume in values], not_computed, spec.label),
    )


def _whole_lung_group(series: LoadedSeries, m: Measurements,
                      algorithm: hd.sr.AlgorithmIdentification, not_computed: list[str]):
    rows = [
        (lc.VOLUME, m.lung_volume_ml, lc.UNIT_ML),
        (lc.LESION_VOLUME, m.lesion_volume_ml, lc.UNIT_ML),
        (lc.GGO_VOLUME, m.ggo_volume_ml, lc.UNIT_ML),
        (lc.CONSOLIDATION_VOLUME, m.consolidation_volume_ml, lc.UNIT_ML),
        (lc.LESION_PERCENT, m.lesion_pct, lc.UNIT_PERCENT),
        (lc.GGO_PERCENT, m.ggo_pct, lc.UNIT_PERCENT),
        (lc.CONSOLIDATION_PERCENT, m.consolidation_pct, lc.UNIT_PERCENT),
        (lc.CT_SEVERITY_SCORE, m.ct_score, lc.UNIT_SCORE),
        (lc.CT_SCORE_EQUIVALENT, m.ct_score_equivalent, lc.UNIT_SCORE),
        (lc.INVOLVED_LOBES, m.involved_lobes, lc.UNIT_NONE),
        (lc.HELLINGER, m.hellinger_distance, lc.UNIT_NONE),
        (lc.IOU_VS_REFERENCE, m.iou_vs_reference, lc.UNIT_NONE),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=segment_tracking_uid(series, "whole_lung"), identifier="Whole lung"),
        finding_sites=[hd.sr.FindingSite(lc.LUNG)],
        algorithm_id=algorithm,
        measurements=_measurements([(*row, None) for row in rows], not_computed, "whole lung"),
    )


def _measurements(rows, not_computed: list[str], where: str) -> list[hd.sr.Measurement]:
    """TID 300 measurements for the rows with a value; the others are listed in not_computed."""
    out = []
    for name, value, unit, method in rows:
        if value is None:
            not_computed.append(f"{where}: {name.meaning} not computed")
            continue
        if isinstance(value, bool):
            raise TypeError(f"{name.meaning}: boolean is not a measurement value")
        out.append(hd.sr.Measurement(name=name, value=rounded(_kind(name, unit), value),
                                     unit=unit, method=method))
    return out


def _kind(name, unit) -> str:
    """How a value is rounded (node.outputs.rounding), from its unit and concept."""
    if unit == lc.UNIT_ML:
        return "ml"
    if unit == lc.UNIT_PERCENT:
        return "percent"
    if unit == lc.UNIT_SCORE or name == lc.INVOLVED_LOBES:
        return "score"
    return "index"


def _remarks(m: Measurements, predecessor: tuple[str, str, str] | None,
             not_computed: list[str]) -> list[tuple[object, str]]:
    remarks: list[tuple[object, str]] = [(lc.LESION_ENGINE, m.engine)]
    remarks += [(lc.NOT_COMPUTED, text) for text in not_computed]
    remarks += [(lc.QUALITY_REMARK, flag) for flag in m.quality_flags]
    if m.lobes is not None:
        remarks += [(lc.QUALITY_REMARK, f"lobe {key}: boundary confidence {lobe.confidence}")
                    for key, lobe in m.lobes.items() if lobe.confidence is not None]
    if predecessor is not None:
        remarks.append((lc.QUALITY_REMARK, f"amends report {predecessor[2]}"))
    return remarks


# --- the patient's course (issue 9) ------------------------------------------------------


def course_content(series: LoadedSeries, course, algorithm: hd.sr.AlgorithmIdentification):
    """(measurement groups, evidence datasets, remarks) for the comparison with the prior scan.

    Empty when there is no course or no prior. ``course`` is a quant.course.Course."""
    from node.outputs import course_codes as cc
    from quant.course import LOBE_MEASURES, WHOLE_LUNG_MEASURES

    if course is None:
        return [], [], []
    remarks = [(cc.COURSE_SUMMARY, course.summary)]
    prior = course.prior
    if prior is None:
        return [], [], remarks
    time_point = hd.sr.TimePointContext(
        time_point=course.current.acquired_at.date().isoformat(),
        time_point_order=course.current_index + 1,
        subject_time_point_identifier=course.current.study_uid,
    )
    common = [
        hd.sr.Measurement(name=cc.DAYS_SINCE_PRIOR, value=float(course.days_since_prior),
                          unit=cc.UNIT_DAYS),
        hd.sr.Measurement(name=cc.SCANS_IN_COURSE, value=float(len(course.scans)),
                          unit=lc.UNIT_NONE),
    ]

    def rows(keys, concepts, lobe):
        out = []
        for key in keys:
            point = course.since_prior(key, lobe)
            concept, unit = concepts[key]
            prior_value = None if point.value is None or point.change is None else point.value - point.change
            for derivation, value, value_unit in (
                (cc.VALUE_AT_PRIOR, prior_value, unit),
                (cc.CHANGE_SINCE_PRIOR, point.change, unit),
                (cc.RELATIVE_CHANGE_SINCE_PRIOR, point.relative_change_pct, lc.UNIT_PERCENT),
            ):
                if value is not None:
                    out.append(hd.sr.Measurement(name=concept, value=float(value),
                                                 unit=value_unit, derivation=derivation))
        return out

    trends = [hd.sr.QualitativeEvaluation(name, cc.TREND_CODES[trend])
              for name, trend in ((cc.LESION_TREND, course.trend), (cc.GGO_TREND, course.ggo_trend),
                                  (cc.CONSOLIDATION_TREND, course.consolidation_trend))
              if trend is not None]
    whole = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derive_uid(series.series_instance_uid, "course", prior.study_uid, "whole lung"),
            identifier="Change since prior: whole lung"),
        time_point_context=time_point,
        finding_sites=[hd.sr.FindingSite(lc.LUNG)],
        algorithm_id=algorithm,
        measurements=common + rows(WHOLE_LUNG_MEASURES, cc.WHOLE_LUNG_CONCEPTS, None),
        qualitative_evaluations=trends or None,
    )
    evidence = []
    for name, uids, sop_class in ((cc.PRIOR_REPORT, prior.sr_uids and prior.sr_uids[1:],
                                   Comprehensive3DSRStorage),
                                  (cc.PRIOR_SEGMENTATION, prior.seg_uids, SegmentationStorage)):
        if not uids:
            continue
        whole[0].ContentSequence.append(hd.sr.CompositeContentItem(
            name=name, referenced_sop_class_uid=sop_class, referenced_sop_instance_uid=uids[1],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        ref = Dataset()
        ref.StudyInstanceUID = prior.study_uid
        ref.SeriesInstanceUID, ref.SOPInstanceUID = uids
        ref.SOPClassUID = sop_class
        evidence.append(ref)
    groups = [whole]
    lobe_specs = {spec.key: spec for spec in lc.LOBE_SEGMENTS}
    for lobe in sorted({m.lobe for m in course.measures if m.lobe is not None}):
        measurements = rows(LOBE_MEASURES, cc.LOBE_CONCEPTS, lobe)
        if not measurements or lobe not in lobe_specs:
            continue
        spec = lobe_specs[lobe]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derive_uid(series.series_instance_uid, "course", prior.study_uid, lobe),
                identifier=f"Change since prior: {spec.label}"),
            time_point_context=time_point,
            finding_sites=[hd.sr.FindingSite(spec.property_type, laterality=spec.modifier)],
            algorithm_id=algorithm,
            measurements=measurements,
        ))
    return groups, evidence, remarks
