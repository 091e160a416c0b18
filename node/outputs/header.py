"""Patient and study attributes every output copies from the source series.

Real (de-identified) exports often lack Type 2 attributes of the Patient and General Study
modules: PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate, StudyTime,
ReferringPhysicianName, StudyID, AccessionNumber. DICOM requires them present, empty when
unknown, so every output writes them empty instead of failing (highdicom copies them from
the first source image and fails on a missing one).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

#: Type 2 attributes of the Patient and General Study modules that outputs copy.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def with_type2(dataset: Dataset) -> Dataset:
    """``dataset`` itself when it has every Type 2 attribute, else a shallow copy with the
    missing ones present and empty (the source dataset is never changed)."""
    missing = [k for k in TYPE2_PATIENT_STUDY if k not in dataset]
    if not missing:
        return dataset
    fixed = Dataset()  # new element storage: copy.copy and Dataset(ds) share the source's
    for element in dataset:
        fixed.add(element)
    if hasattr(dataset, "file_meta"):
        fixed.file_meta = dataset.file_meta
    for keyword in missing:
        setattr(fixed, keyword, None)
    return fixed


def patient_study_reference(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The source datasets, each with every Type 2 patient/study attribute present."""
    return [with_type2(ds) for ds in datasets]


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and General Study attributes (Type 2 ones empty when absent)."""
    source = with_type2(source)
    target.StudyInstanceUID = source.StudyInstanceUID
    for keyword in TYPE2_PATIENT_STUDY:
        setattr(target, keyword, source[keyword].value)
    for keyword in ("IssuerOfPatientID", "PatientAge", "StudyDescription",
                    "OtherPatientIDs", "EthnicGroup", "PatientWeight", "PatientSize"):
        if keyword in source and source[keyword].value not in (None, ""):
            setattr(target, keyword, source[keyword].value)
