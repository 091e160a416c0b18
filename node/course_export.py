"""``lungnode cohort export``: every analysed scan in the state store as one CSV row.

Columns: patient_id, issuer_of_patient_id, study_instance_uid, series_instance_uid,
study_date (YYYY-MM-DD, the acquisition date in UTC), acquired_at (ISO 8601, UTC),
days_since_first_scan (of that patient), the measures (ct_score, lesion_pct, ggo_pct,
consolidation_pct, lung/lesion/GGO/consolidation volumes in ml, involved_lobes), and with
``--clinical`` also group and days_from_onset, so the file feeds ``lungnode cohort analyze``.
One row per study (the latest analysis of it), as in the patient's course.

The clinical CSV has the columns patient_id, onset_date (YYYY-MM-DD: symptom onset) and
group (e.g. moderate, severe); an optional issuer_of_patient_id column matches the issuer
too. days_from_onset counts calendar days from the onset date to the study date.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from node.config import Settings
from node.store import DB_FILENAME, StateStore
from quant.cohort import CohortError

MEASURE_COLUMNS = ("ct_score", "lesion_pct", "ggo_pct", "consolidation_pct", "lung_volume_ml",
                   "lesion_volume_ml", "ggo_volume_ml", "consolidation_volume_ml",
                   "involved_lobes")


def scan_table(store: StateStore) -> pd.DataFrame:
    """One row per analysed study (latest analysis), ordered by patient and date."""
    latest: dict[tuple[str, str, str], object] = {}
    for scan in store.all_patient_scans():     # ordered by recorded_at within a patient
        key = (scan.issuer_of_patient_id, scan.patient_id, scan.study_uid)
        if key not in latest or latest[key].recorded_at <= scan.recorded_at:
            latest[key] = scan
    rows = []
    for scan in latest.values():
        when = datetime.fromtimestamp(scan.acquired_at, tz=timezone.utc)
        values = json.loads(scan.measurements_json)
        rows.append({"patient_id": scan.patient_id,
                     "issuer_of_patient_id": scan.issuer_of_patient_id,
                     "study_instance_uid": scan.study_uid,
                     "series_instance_uid": scan.series_uid,
                     "study_date": when.date().isoformat(), "acquired_at": when.isoformat(),
                     **{c: values.get(c) for c in MEASURE_COLUMNS}})
    columns = ["patient_id", "issuer_of_patient_id", "study_instance_uid", "series_instance_uid",
               "study_date", "acquired_at", "days_since_first_scan", *MEASURE_COLUMNS]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows).sort_values(["issuer_of_patient_id", "patient_id", "acquired_at"],
                                           ignore_index=True)
    acquired = pd.to_datetime(frame["acquired_at"], utc=True)
    first = acquired.groupby([frame["issuer_of_patient_id"], frame["patient_id"]]).transform("min")
    frame["days_since_first_scan"] = ((acquired - first).dt.total_seconds() / 86400.0).round(3)
    return frame[columns]


def join_clinical(scans: pd.DataFrame, clinical_csv: Path) -> tuple[pd.DataFrame, int]:
    """Add group and days_from_onset; returns (table, number of patients not in the CSV)."""
    try:
        clinical = pd.read_csv(clinical_csv, dtype=str)
    except FileNotFoundError as exc:
        raise CohortError(f"{clinical_csv}: no such file") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CohortError(f"{clinical_csv}: not a readable CSV ({exc})") from exc
    clinical = clinical.rename(columns=lambda c: str(c).strip())
    missing = [c for c in ("patient_id", "onset_date", "group") if c not in clinical.columns]
    if missing:
        raise CohortError(f"{clinical_csv}: missing column(s) {', '.join(missing)} "
                          "(needs patient_id, onset_date, group)")
    keys = ["patient_id"] + (["issuer_of_patient_id"] if "issuer_of_patient_id" in clinical else [])
    clinical = clinical.fillna("")
    for column in clinical.columns:
        clinical[column] = clinical[column].str.strip()
    onset = pd.to_datetime(clinical["onset_date"], format="%Y-%m-%d", errors="coerce")
    if onset.isna().any():
        line = int(onset.index[onset.isna()][0]) + 2
        raise CohortError(f"{clinical_csv}: onset_date on line {line} is not YYYY-MM-DD: "
                          f"{clinical['onset_date'].iloc[line - 2]!r}")
    if clinical.duplicated(keys).any():
        dup = clinical.loc[clinical.duplicated(keys), "patient_id"].iloc[0]
        raise CohortError(f"{clinical_csv}: patient {dup} is listed twice")
    clinical = clinical.assign(_onset=onset.dt.date)[keys + ["group", "_onset"]]
    joined = scans.merge(clinical, on=keys, how="left")
    study = pd.to_datetime(joined["study_date"]).dt.date
    joined["days_from_onset"] = pd.array(
        [(s - o).days if isinstance(o, type(s)) else None for s, o in zip(study, joined["_onset"])],
        dtype="Int64")
    unmatched = joined.loc[joined["_onset"].isna(), ["issuer_of_patient_id", "patient_id"]]
    return joined.drop(columns=["_onset"]), len(unmatched.drop_duplicates())


def export_cohort(settings: Settings, out_csv: Path, clinical_csv: Path | None = None) -> int:
    """Write the CSV; return the number of scans written."""
    db_path = settings.storage_root / DB_FILENAME
    if not db_path.exists():
        raise CohortError(f"no state store at {db_path}: the node has not run with this "
                          "storage root (set --config or --storage)")
    store = StateStore(db_path)
    try:
        table = scan_table(store)
    finally:
        store.close()
    if clinical_csv is not None:
        table, unmatched = join_clinical(table, clinical_csv)
        if unmatched:
            print(f"lungnode cohort export: {unmatched} patient(s) not in {clinical_csv}: "
                  "their group and days_from_onset are empty", file=sys.stderr)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return len(table)
