"""The single registry of lungnode's segment numbers, labels and coded concepts.

SEG segments and SR measurement groups are both built from ``SEGMENTS`` so their numbers,
labels, codes and tracking identifiers always agree.

Code choices (checked against pydicom's copy of PS3.16 and public SNOMED CT listings):

* Lungs and lobes follow the DICOM/Slicer/dcmqi convention of CID 7151 (Segmentation
  Property Types) plus a laterality modifier from CID 244: SCT 39607008 "Lung" with
  SCT 7771000 "Left" / SCT 24028007 "Right"; SCT 45653009 "Upper lobe of lung" and
  SCT 90572001 "Lower lobe of lung" with the side as modifier; SCT 72481006 "Middle lobe of
  right lung" (modifier Right, redundant but uniform). Category SCT 91723000 "Anatomical
  Structure" (CID 7150). The pre-coordinated "Left lung" 44029006 / "Right lung" 3341006
  are valid SNOMED CT too, but they are not in CID 7151 and viewers keyed on the
  Lung+modifier pattern (3D Slicer, OHIF) recognise the latter.
* Ground-glass opacity: DCM 112120 "Ground glass opacity" (CID 6102/6104, the DICOM
  chest-imaging findings); category SCT 49755003 "Morphologically Abnormal Structure".
* Consolidation: SCT 95436008 "Lung consolidation" (no DCM code exists); same category.
* Procedure reported: SCT 169069000 "CT of chest" (418023006 is "CT of chest, abdomen and
  pelvis" and would be wrong).
* Measurements: SCT 118565006 "Volume" with DCM 126030 "Sum of segmented voxel method
  for volume" as method, unit UCUM "ml". Quantities with no standard concept (percent of
  lung volume, CT severity score, its equivalent from the lesion percentage, number of
  involved lobes, lobe score, Hellinger distance, IoU vs reference, quality remarks) use
  the private scheme ``99LUNGNODE``, declared in the SR's Coding Scheme Identification
  Sequence. Units: "%" Percent, "{score}" score, "1" no units (UCUM).
* A value that could not be computed is left out, and named in a TEXT item "Measurement
  not computed" (LN016); never written as 0 (see node.outputs.sr for why not CID 42).
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from node.uids import derive_uid
from segmentation.types import LOBE_KEYS, Lobe

PRIVATE_SCHEME = "99LUNGNODE"
PRIVATE_SCHEME_NAME = "lungnode private codes"
PRIVATE_SCHEME_UID = derive_uid("lungnode", "coding scheme", PRIVATE_SCHEME)


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure            # 91723000
MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
LUNG = codes.SCT.Lung                                            # 39607008
LEFT = codes.SCT.Left                                            # 7771000
RIGHT = codes.SCT.Right                                          # 24028007
UPPER_LOBE = CodedConcept("45653009", "SCT", "Upper lobe of lung")
LOWER_LOBE = CodedConcept("90572001", "SCT", "Lower lobe of lung")
MIDDLE_LOBE_RIGHT = CodedConcept("72481006", "SCT", "Middle lobe of right lung")
GROUND_GLASS_OPACITY = codes.DCM.GroundGlassOpacity              # DCM 112120
LUNG_CONSOLIDATION = CodedConcept("95436008", "SCT", "Lung consolidation")
CT_OF_CHEST = CodedConcept("169069000", "SCT", "CT of chest")

VOLUME = codes.SCT.Volume                                        # 118565006
SUM_OF_VOXELS = codes.DCM.SumOfSegmentedVoxelMethodForVolume     # DCM 126030

PERCENT_OF_LUNG = private("LN001", "Percent of lung volume")
CT_SEVERITY_SCORE = private("LN002", "CT severity score (0-25)")
CT_SCORE_EQUIVALENT = private("LN003", "CT severity score equivalent from lesion percent")
INVOLVED_LOBES = private("LN004", "Number of involved lobes")
LOBE_SCORE = private("LN005", "Lobe involvement score (0-5)")
HELLINGER = private("LN006", "Hellinger distance of lung HU histogram to normal reference")
IOU_VS_REFERENCE = private("LN007", "Intersection over union with reference lung mask")
QUALITY_REMARK = private("LN008", "Quality remark")
LESION_ENGINE = private("LN009", "Lesion segmentation engine")
LESION_VOLUME = private("LN010", "Lesion volume (GGO and consolidation)")
GGO_VOLUME = private("LN011", "Ground glass opacity volume")
CONSOLIDATION_VOLUME = private("LN012", "Consolidation volume")
LESION_PERCENT = private("LN013", "Lesion percent of lung volume")
GGO_PERCENT = private("LN014", "Ground glass opacity percent of lung volume")
CONSOLIDATION_PERCENT = private("LN015", "Consolidation percent of lung volume")
NOT_COMPUTED = private("LN016", "Measurement not computed")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

UNIT_ML = CodedConcept("ml", "UCUM", "milliliter")
UNIT_PERCENT = codes.UCUM.Percent
UNIT_SCORE = CodedConcept("{score}", "UCUM", "score")
UNIT_NONE = codes.UCUM.NoUnits                                   # "1"


@dataclass(frozen=True)
class SegmentSpec:
    """One SEG segment: the SEG group it belongs to, its number there, key, label and codes."""

    number: int
    key: str
    label: str
    category: object
    property_type: object
    modifier: object | None
    rgb: tuple[int, int, int]
    group: str = ""


@dataclass(frozen=True)
class SegGroup:
    """One SEG series: segments that never overlap, so viewers show them as one labelmap.

    ``name`` is the group key (the ``seg_series_numbers`` key too), ``filename`` what
    ``lungnode analyze`` writes, ``description`` the SeriesDescription a radiologist sees.
    """

    name: str
    filename: str
    description: str
    segments: tuple[SegmentSpec, ...]


def _spec(number: int, group: str, key: str, label: str, category, ptype, modifier, rgb):
    return SegmentSpec(number, key, label, category, ptype, modifier, rgb, group)


_LOBE_CODES = {
    Lobe.LEFT_UPPER: ("Left upper lobe", UPPER_LOBE, LEFT, (183, 156, 220)),
    Lobe.LEFT_LOWER: ("Left lower lobe", LOWER_LOBE, LEFT, (221, 130, 101)),
    Lobe.RIGHT_UPPER: ("Right upper lobe", UPPER_LOBE, RIGHT, (177, 122, 101)),
    Lobe.RIGHT_MIDDLE: ("Right middle lobe", MIDDLE_LOBE_RIGHT, RIGHT, (144, 238, 144)),
    Lobe.RIGHT_LOWER: ("Right lower lobe", LOWER_LOBE, RIGHT, (250, 250, 210)),
}

#: The three SEG series. Within each, segments are numbered from 1 and do not overlap
#: (GGO and consolidation split the lesion mask by HU; left/right lung are disjoint; the
#: lobes are one label map), which is what OHIF needs to hold every voxel in one labelmap.
LESIONS = SegGroup("lesions", "seg.dcm", "Lesions: GGO and consolidation (lungnode)", (
    _spec(1, "lesions", "ggo", "Ground glass opacity", MORPHOLOGICALLY_ABNORMAL,
          GROUND_GLASS_OPACITY, None, (241, 214, 69)),
    _spec(2, "lesions", "consolidation", "Consolidation", MORPHOLOGICALLY_ABNORMAL,
          LUNG_CONSOLIDATION, None, (216, 101, 79)),
))
LUNGS = SegGroup("lungs", "seg_lungs.dcm", "Lungs: left and right (lungnode)", (
    _spec(1, "lungs", "left_lung", "Left lung", ANATOMICAL_STRUCTURE, LUNG, LEFT, (128, 174, 128)),
    _spec(2, "lungs", "right_lung", "Right lung", ANATOMICAL_STRUCTURE, LUNG, RIGHT,
          (111, 184, 210)),
))
LOBES = SegGroup("lobes", "seg_lobes.dcm", "Lung lobes (lungnode)", tuple(
    _spec(int(lobe), "lobes", LOBE_KEYS[lobe], label, ANATOMICAL_STRUCTURE, ptype, mod, rgb)
    for lobe, (label, ptype, mod, rgb) in sorted(_LOBE_CODES.items())
))
SEG_GROUPS: tuple[SegGroup, ...] = (LESIONS, LUNGS, LOBES)

SEGMENTS: tuple[SegmentSpec, ...] = LUNGS.segments + LESIONS.segments
#: Lobe segments 1..5 of the lobes SEG, in Lobe order (only written when Masks.lobes is set).
LOBE_SEGMENTS: tuple[SegmentSpec, ...] = LOBES.segments
SEGMENT_BY_KEY: dict[str, SegmentSpec] = {
    spec.key: spec for group in SEG_GROUPS for spec in group.segments}

LOBE_VALUE_BY_KEY: dict[str, int] = {key: int(lobe) for lobe, key in LOBE_KEYS.items()}
