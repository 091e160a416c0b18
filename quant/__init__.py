"""Measurements from an HU volume and its masks. Pure numpy/scipy: no DICOM, no torch."""
