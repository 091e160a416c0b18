"""Helpers for the node's state/network tests: settings, a small real analysis function,
synthetic series written with pydicom, and a Node running in-process."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from node.config import Settings
from node.uids import derive_uid


class FakeVolumeError(Exception):
    """Stands for node.volume.VolumeError in tests that inject their own analysis."""


def make_settings(root: Path, **sections) -> Settings:
    raw = {
        "network": {"port": 0, "ae_title": "LUNGNODE"},
        "storage": {"root": str(root), "min_free_mb": 0},
        "series": {"quiet_period_s": 0.3},
        "selection": {"min_slices": 3},
        "delivery": {"max_attempts": 3, "retry_initial_delay_s": 0.2, "retry_max_delay_s": 1},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return Settings.model_validate(raw)


def make_series(out_dir: Path, n: int = 5, *, sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), thickness: float = 1.0,
                series_uid: str | None = None, study_uid: str | None = None,
                modality: str = "CT", start: int = 0,
                orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)) -> list[Path]:
    """A tiny (16x16) real DICOM series written with pydicom."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(start, start + n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.SliceThickness = thickness
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, -float(i)]
        ds.ImageOrientationPatient = list(orientation)
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.full((16, 16), i, np.int16).tobytes()
        path = out_dir / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class FakeOutput:
    output_files: list[Path]
    sr_uids: tuple[str, str, str]
    measurements_json: Path


class RecordingAnalysis:
    """A small real analysis: writes one Secondary Capture DICOM file (deterministic UIDs)
    and a measurements JSON into out_dir; records each call."""

    def __init__(self, block_on: Path | None = None, fail_with: Exception | None = None):
        self.calls: list[dict] = []
        self.block_on = block_on
        self.fail_with = fail_with

    def __call__(self, paths, out_dir, settings, *, revision=1, predecessor_sr=None,
                 earlier_scans=None):
        self.calls.append({"n": len(paths), "revision": revision, "predecessor_sr": predecessor_sr})
        if self.fail_with is not None:
            raise self.fail_with
        return write_fake_outputs(paths, Path(out_dir), revision, predecessor_sr, self.block_on)


def write_fake_outputs(paths, out_dir: Path, revision, predecessor_sr, block_on=None):
    import time

    if block_on is not None:
        while not block_on.exists():
            time.sleep(0.02)
    src = pydicom.dcmread(paths[0], stop_before_pixels=True)
    series_uid = str(src.SeriesInstanceUID)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = derive_uid(series_uid, revision, "sc")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = str(src.StudyInstanceUID)
    ds.SeriesInstanceUID = derive_uid(series_uid, revision, "series")
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    out = out_dir / "summary.dcm"  # a file name node.delivery_plan.kind_of knows
    ds.save_as(out, enforce_file_format=True)
    mj = out_dir / "measurements.json"
    mj.write_text(json.dumps({"slices": len(paths), "revision": revision}))
    sr = (str(src.StudyInstanceUID), derive_uid(series_uid, revision, "sr-series"),
          derive_uid(series_uid, revision, "sr"))
    return FakeOutput([out], sr, mj)


def copy_files(paths, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dest / Path(p).name)) for p in paths]
