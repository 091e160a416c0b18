"""Bounded-time fuzzing (hypothesis) of the two places where outside bytes enter the node.

* The receiver over a real socket: random and mutated PDUs before and inside an
  association, and mutated datasets sent byte for byte (pynetdicom's chunked send reads the
  file's raw bytes, so the node gets exactly the mutation). The node never crashes, answers
  every C-STORE with one of its documented statuses (or aborts), never stores a file as good
  whose header does not parse to the request's UIDs, and answers C-ECHO after every example.
* node.volume.load_series on mutated headers and bytes: a LoadedSeries or a VolumeError
  with a reason, never another exception.

Each test runs a fixed number of examples (``max_examples``) without a deadline, with the
database off, so the run is bounded and repeatable (``derandomize``).
"""

from __future__ import annotations

import io
import socket
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from node.receiver import (
    STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS, Receiver, StoreContext,
)
from node.spool import Spool
from node.store import StateStore
from node.volume import VolumeError, load_series
from node_testkit import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
KNOWN_STATUSES = {STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES,
                  STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, STATUS_CANNOT_UNDERSTAND}


def ct_slice(i: int, study: str, series: str, frame: str, size: int = 8) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient = [-10.0, -10.0, -2.0 * i]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.full((size, size), 1000 + i, np.uint16).tobytes()
    return ds


def encode(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- the loader

ATTRIBUTES = ["Modality", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
              "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
              "PixelSpacing", "Rows", "Columns", "BitsAllocated", "PixelRepresentation",
              "SamplesPerPixel", "RescaleSlope", "RescaleIntercept", "RescaleType",
              "GantryDetectorTilt", "PhotometricInterpretation", "NumberOfFrames",
              "SOPInstanceUID", "PixelData", "ImageType", "SliceThickness"]
VALUES = st.one_of(
    st.none(), st.integers(-2**31, 2**31), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.floats(-1e6, 1e6), max_size=7),
    st.sampled_from(["", "CT", "MR", "1.2.3", "1..2", "0", "-1", "nan", "HU", "OD",
                     "1\\0\\0\\0\\1\\0", "abc\\def"]),
    st.binary(max_size=64),
)
MUTATION = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 3), st.sampled_from(ATTRIBUTES), VALUES),
    st.tuples(st.just("delete"), st.integers(0, 3), st.sampled_from(ATTRIBUTES), st.none()),
    st.tuples(st.just("truncate"), st.integers(0, 3), st.integers(0, 2000), st.none()),
    st.tuples(st.just("flip"), st.integers(0, 3), st.integers(128, 1200), st.integers(1, 255)),
)


def _apply(files: list[bytes], mutation) -> None:
    """Mutate ``files`` (encoded Part 10 bytes) in place; a value pydicom refuses to set or
    to write leaves the file as it was (it could not reach the loader either)."""
    kind, index, what, value = mutation
    raw = files[index]
    if kind in ("set", "delete"):
        try:
            ds = pydicom.dcmread(io.BytesIO(raw))
            if kind == "set":
                setattr(ds, what, value)
            elif what in ds:
                delattr(ds, what)
            files[index] = encode(ds)
        except Exception:
            pass
    elif kind == "truncate":
        files[index] = raw[:what]
    elif what < len(raw):
        flipped = bytearray(raw)
        flipped[what] ^= value
        files[index] = bytes(flipped)


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_load_series_only_raises_volume_error(mutations):
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = [encode(ct_slice(i, study, series, frame)) for i in range(4)]
    for m in mutations:
        _apply(files, m)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, raw in enumerate(files):
            p = Path(d) / f"{i}.dcm"
            p.write_bytes(raw)
            paths.append(p)
        try:
            loaded = load_series(paths)
        except VolumeError as exc:
            assert str(exc), "a VolumeError without a reason"
            return
        assert loaded.volume.hu.shape[0] == 4  # never a dropped slice


# --------------------------------------------------------------------------- the receiver


@pytest.fixture(scope="module")
def rx(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-node")
    settings_ = make_settings(root, network={"pdu_timeout_s": 1.0, "acse_timeout_s": 2},
                              storage={"max_instance_mb": 1})
    receiver = Receiver(settings_, StoreContext(Spool(root, 0), StateStore(root / "db.sqlite3")))
    receiver.start()
    yield receiver
    receiver.stop()


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="FUZZECHO")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="LUNGNODE")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def _exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read what the node answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the node closed first (an abort on a bad header)
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return data


PDU = st.builds(
    lambda t, length, body, cut: (bytes([t, 0]) + length.to_bytes(4, "big") + body)[:cut],
    st.integers(0, 9), st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1)),
    st.binary(max_size=300), st.integers(0, 320))


@FUZZ
@given(pdus=st.lists(st.one_of(PDU, st.binary(max_size=64)), min_size=1, max_size=3))
def test_receiver_survives_random_pdus(rx, pdus):
    answer = _exchange(rx.port, b"".join(pdus))
    if answer:  # whatever the node answered is a well-formed PDU stream start
        assert answer[0] in (0x02, 0x03, 0x07), answer[:16]
    assert echo_ok(rx.port)


def _base_file(d: Path) -> tuple[Path, FileDataset]:
    ds = ct_slice(0, generate_uid(), generate_uid(), generate_uid(), size=16)
    p = d / "base.dcm"
    ds.save_as(p, enforce_file_format=True)
    return p, ds


@FUZZ
@given(cut=st.integers(0, 800), flips=st.lists(st.tuples(st.integers(0, 800),
                                                         st.integers(1, 255)), max_size=4),
       junk=st.binary(max_size=40))
def test_receiver_mutated_datasets_answered_and_never_stored_bad(rx, tmp_path_factory, cut,
                                                                  flips, junk):
    d = tmp_path_factory.mktemp("mut")
    path, ds = _base_file(d)
    raw = bytearray(path.read_bytes())
    meta_end = len(raw) - len(encode(ds)) + 0  # file == meta + dataset; find the dataset
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        meta_end = f.tell()
    body = bytearray(raw[meta_end:])
    for offset, mask in flips:
        if offset < len(body):
            body[offset] ^= mask
    body = body[:cut] + junk if cut < len(body) else body + junk
    path.write_bytes(bytes(raw[:meta_end]) + bytes(body))
    ae = AE(ae_title="FUZZSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="LUNGNODE")
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(path)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    status = int(rsp.Status) if "Status" in rsp else None
    if status is not None:
        assert status in KNOWN_STATUSES, hex(status)
    record = rx.ctx.store.instance(str(ds.SOPInstanceUID))
    if status == STATUS_SUCCESS:
        assert record is not None
        stored = pydicom.dcmread(record.path, stop_before_pixels=True)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
        assert Path(record.path).name == f"{stored.SOPInstanceUID}.dcm"
        assert stored.SeriesInstanceUID in record.path and stored.StudyInstanceUID in record.path
    else:
        assert record is None
    assert echo_ok(rx.port)
