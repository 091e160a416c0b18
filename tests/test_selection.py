"""Selection rules (node/rules.py) on the real headers vendors write (shared/data).

Accepted: axial ORIGINAL reconstructions whatever ImageType value 2 (GE thin-slice chest CT is
ORIGINAL\\SECONDARY\\AXIAL) and whatever vendor value 4 (Siemens CT_SOM5 SPI). Refused: coronal
and sagittal reformats (by ImageType and by geometry alone), derived axial slabs unless the site
opts in, MIP/MinIP and localizers, too few distinct positions.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.config import SelectionSettings
from node.rules import evaluate_series, tilt_from_axial_deg


def _headers(folder: Path, pattern: str = "*.dcm") -> list:
    files = sorted(folder.glob(pattern))
    assert files, f"no DICOM files in {folder}"
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


@pytest.fixture
def few() -> SelectionSettings:
    """The default rules, but the shared partial series have only 10-12 slices."""
    return SelectionSettings(min_slices=10)


def test_ge_thin_slice_original_secondary_axial_is_analysed(shared_data, few):
    headers = _headers(shared_data / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset")
    assert list(headers[0].ImageType) == ["ORIGINAL", "SECONDARY", "AXIAL"]
    decision = evaluate_series(headers, few)
    assert decision.selected, decision.reason


def test_siemens_vendor_fourth_value_and_deidentified_header_is_analysed(shared_data):
    headers = _headers(shared_data / "covid_ct_md_samples/normal002")
    assert list(headers[0].ImageType)[3] == "CT_SOM5 SPI" and "PatientName" not in headers[0]
    decision = evaluate_series(headers, SelectionSettings())
    assert decision.selected, decision.reason


def test_default_lidc_series_is_analysed(shared_data):
    headers = _headers(shared_data / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0001_full_series")
    decision = evaluate_series(headers, SelectionSettings())
    assert decision.selected and "133 slices" in decision.reason


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_ny_sbu_reformats_are_refused(shared_data, plane):
    files = sorted((shared_data / "covid19_ny_sbu_single_slices").glob(f"*/{plane}/*.dcm"))
    assert files
    for f in files:
        header = pydicom.dcmread(f, stop_before_pixels=True)
        decision = evaluate_series([header], SelectionSettings(min_slices=1))
        assert not decision.selected
        assert "derived reconstruction" in decision.reason
        # and by geometry alone, even where the site accepts derived axial series
        opted_in = evaluate_series([header], SelectionSettings(min_slices=1, accept_derived_axial=True))
        assert not opted_in.selected and "not axial" in opted_in.reason, opted_in.reason


def test_reformat_labelled_original_is_refused_by_geometry(shared_data, few):
    headers = _headers(shared_data / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset")
    for h in headers:
        h.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    decision = evaluate_series(headers, few)
    assert not decision.selected and "not axial" in decision.reason


def test_derived_axial_average_needs_the_site_to_opt_in(shared_data):
    headers = _headers(shared_data / "ricord_1a_partial/patient_1", "**/*.dcm")
    assert list(headers[0].ImageType)[:3] == ["DERIVED", "SECONDARY", "REFORMATTED"]
    refused = evaluate_series(headers, SelectionSettings(min_slices=10))
    assert not refused.selected and "accept_derived_axial" in refused.reason
    accepted = evaluate_series(headers, SelectionSettings(min_slices=10, accept_derived_axial=True))
    assert accepted.selected, accepted.reason


@pytest.mark.parametrize("image_type, word", [
    (["DERIVED", "SECONDARY", "AXIAL", "MIP"], "MIP"),
    (["DERIVED", "SECONDARY", "AXIAL", "MINIP"], "MINIP"),
    (["ORIGINAL", "PRIMARY", "LOCALIZER"], "LOCALIZER"),
])
def test_projections_and_localizers_are_refused_even_when_derived_is_accepted(shared_data, few,
                                                                              image_type, word):
    headers = _headers(shared_data / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset")
    for h in headers:
        h.ImageType = image_type
    settings = few.model_copy(update={"accept_derived_axial": True})
    decision = evaluate_series(headers, settings)
    assert not decision.selected and word in decision.reason


def test_one_position_repeated_is_not_a_volume(shared_data, few):
    headers = _headers(shared_data / "lidc_idri_chest_ct_dicom/LIDC-IDRI-0002_subset")
    for h in headers:
        h.ImagePositionPatient = list(headers[0].ImagePositionPatient)
    decision = evaluate_series(headers, few)
    assert not decision.selected and "1 distinct slice positions" in decision.reason


def test_tilt_angles():
    assert tilt_from_axial_deg([1, 0, 0, 0, 1, 0]) == pytest.approx(0)
    assert tilt_from_axial_deg([-1, 0, 0, 0, -1, 0]) == pytest.approx(0)  # prone
    assert tilt_from_axial_deg([1, 0, 0, 0, 0, -1]) == pytest.approx(90)  # coronal
    assert tilt_from_axial_deg([0, 1, 0, 0, 0, -1]) == pytest.approx(90)  # sagittal
