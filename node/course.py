"""The node's side of the patient's course: who the patient is and when the scan was taken
(from the DICOM headers), and the stored scans as quant.course inputs.

The patient is identified by Patient ID (0010,0020) with Issuer of Patient ID (0010,0021)
("" when absent): never by name. A series without a Patient ID has no course (it cannot be
linked to another scan) and says so in measurements.json.

Acquisition time: Acquisition DateTime, else Acquisition Date + Time, else Series Date +
Time, else Study Date + Time, of the first slice. DICOM dates carry no time zone; Timezone
Offset From UTC (0008,0201) is applied when present, otherwise the time is taken as UTC
(the days between two scans of one site are the same either way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from node.store import PatientScan
from quant.course import CourseScan, scan_from_measurements


@dataclass(frozen=True)
class ScanIdentity:
    patient_id: str
    issuer_of_patient_id: str
    acquired_at: datetime     # timezone-aware UTC


def _offset(ds: Dataset) -> timezone:
    text = str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
    if len(text) == 5 and text[0] in "+-" and text[1:].isdigit():
        minutes = int(text[1:3]) * 60 + int(text[3:5])
        return timezone(timedelta(minutes=minutes if text[0] == "+" else -minutes))
    return timezone.utc


def acquisition_time(ds: Dataset) -> datetime | None:
    """When the scan was acquired (UTC), from the first header field pair that is set."""
    value = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if value:
        try:
            parsed = DT(value)
        except ValueError:
            parsed = None
        if parsed is not None:
            when = parsed if parsed.tzinfo else parsed.replace(tzinfo=_offset(ds))
            return when.astimezone(timezone.utc)
    for date_key, time_key in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                               ("StudyDate", "StudyTime")):
        date_text = str(ds.get(date_key, "") or "").strip()
        if not date_text:
            continue
        try:
            day = DA(date_text)
        except ValueError:
            continue
        time_text = str(ds.get(time_key, "") or "").strip()
        try:
            clock = TM(time_text) if time_text else None
        except ValueError:
            clock = None
        when = datetime(day.year, day.month, day.day, tzinfo=_offset(ds))
        if clock is not None:
            when = when.replace(hour=clock.hour, minute=clock.minute, second=clock.second,
                                microsecond=clock.microsecond)
        return when.astimezone(timezone.utc)
    return None


def scan_identity(ds: Dataset) -> tuple[ScanIdentity | None, str | None]:
    """(identity, None) or (None, why this scan has no course)."""
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        return None, "no Patient ID in the header: the scan cannot be linked to earlier scans"
    when = acquisition_time(ds)
    if when is None:
        return None, "no acquisition, series or study date in the header: no course"
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    return ScanIdentity(patient_id, issuer, when), None


def course_scan(record: PatientScan) -> CourseScan:
    """A stored scan as quant.course input."""
    return scan_from_measurements(
        json.loads(record.measurements_json), study_uid=record.study_uid,
        series_uid=record.series_uid,
        acquired_at=datetime.fromtimestamp(record.acquired_at, tz=timezone.utc),
        sr_uids=record.sr_uids, seg_uids=record.seg_uids)
