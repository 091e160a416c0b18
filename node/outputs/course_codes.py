"""Coded concepts of the patient's course in the SR (issue 9), kept apart from
node.outputs.codes so the two registries can change independently.

The change since the prior scan is written as TID 300 measurements of the same concept as
the current value (e.g. LN010 "Lesion volume") with a Derivation (DCM 121401) that says
which comparison it is: the value at the prior scan, the change since it (same unit) or the
relative change (percent of the prior value). DICOM has no concepts for these, so they are
private codes of the 99LUNGNODE scheme (declared in the SR), as are the trend and the
references to the prior report and segmentation. The trend values use SNOMED CT qualifier
values: 230993007 "Worsening" (progression), 385425000 "Improving" (absorption) and
58158008 "Stable".
"""

from __future__ import annotations

from highdicom.sr import CodedConcept

from node.outputs import codes as lc
from node.outputs.codes import private

VALUE_AT_PRIOR = private("LN101", "Value at prior scan")
CHANGE_SINCE_PRIOR = private("LN102", "Change since prior scan")
RELATIVE_CHANGE_SINCE_PRIOR = private("LN103", "Relative change since prior scan")
DAYS_SINCE_PRIOR = private("LN104", "Days since prior scan")
LESION_TREND = private("LN105", "Course of lesions since prior scan")
GGO_TREND = private("LN106", "Course of ground glass opacity since prior scan")
CONSOLIDATION_TREND = private("LN107", "Course of consolidation since prior scan")
PRIOR_REPORT = private("LN108", "Prior report")
PRIOR_SEGMENTATION = private("LN109", "Prior segmentation")
COURSE_SUMMARY = private("LN110", "Course summary")
SCANS_IN_COURSE = private("LN111", "Number of scans in course")

WORSENING = CodedConcept("230993007", "SCT", "Worsening")
IMPROVING = CodedConcept("385425000", "SCT", "Improving")
STABLE = CodedConcept("58158008", "SCT", "Stable")
TREND_CODES = {"progression": WORSENING, "absorption": IMPROVING, "stable": STABLE}

UNIT_DAYS = CodedConcept("d", "UCUM", "day")

#: course measure key -> (concept, unit) for the whole lung
WHOLE_LUNG_CONCEPTS = {
    "lung_volume_ml": (lc.VOLUME, lc.UNIT_ML),
    "lesion_volume_ml": (lc.LESION_VOLUME, lc.UNIT_ML),
    "ggo_volume_ml": (lc.GGO_VOLUME, lc.UNIT_ML),
    "consolidation_volume_ml": (lc.CONSOLIDATION_VOLUME, lc.UNIT_ML),
    "lesion_pct": (lc.LESION_PERCENT, lc.UNIT_PERCENT),
    "ggo_pct": (lc.GGO_PERCENT, lc.UNIT_PERCENT),
    "consolidation_pct": (lc.CONSOLIDATION_PERCENT, lc.UNIT_PERCENT),
    "ct_score": (lc.CT_SEVERITY_SCORE, lc.UNIT_SCORE),
    "involved_lobes": (lc.INVOLVED_LOBES, lc.UNIT_NONE),
}
#: per-lobe measure key -> (concept, unit)
LOBE_CONCEPTS = {
    "lesion_volume_ml": (lc.LESION_VOLUME, lc.UNIT_ML),
    "lesion_pct": (lc.LESION_PERCENT, lc.UNIT_PERCENT),
    "score": (lc.LOBE_SCORE, lc.UNIT_SCORE),
}
