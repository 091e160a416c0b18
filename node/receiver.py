"""The C-STORE / C-ECHO SCP: receives instances into the spool, durably, before answering.

``handle_store`` answers success (0x0000) only after the Part 10 file is fsynced under its
final name and its row is committed. Refusals use named statuses and are logged with the
reason; refused bytes are quarantined, never dropped.

Duplicates (same SOP Instance UID): identical bytes → success, nothing changes; different
bytes → the new version replaces the old one atomically (``os.replace``), the row is updated
and the series is reopened (a corrected resend is the newer truth; results get a new revision).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable

from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.transport import ThreadedAssociationServer

from node._fastscp import FastRequestHandler
from node.ae import configured_ae
from node.config import Settings
from node.spool import OutOfSpace, Spool, write_atomically
from node.store import InstanceRecord, StateStore
from node.uids import InvalidUID, sanitize_uid

LOG = logging.getLogger(__name__)

# DIMSE C-STORE statuses (PS3.4 Annex B.2.3, PS3.7 Annex C)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
#: Analysable image storage SOP classes.
IMAGE_SOP_CLASSES = (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)
#: Derived objects (ours and others', routed back by the PACS): stored, never analysed.
DERIVED_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
)
#: Accepted transfer syntaxes: uncompressed, deflated and the lossless (and J2K/JPEG-LS
#: near-lossless/lossy) compressions; plain lossy JPEG baseline/extended is not accepted.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14 SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

_LAST_HEADER_TAG = 0x0020000E  # SeriesInstanceUID: nothing after it is read on receipt


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class StoredInstance:
    """What the receiver tells the series tracker after committing an instance."""

    series_uid: str
    study_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    received_at: float


@dataclass
class StoreContext:
    """The C-STORE handler's dependencies (passed in, never global)."""

    spool: Spool
    store: StateStore
    on_instance: Callable[[StoredInstance], None] | None = None


def _read_header_from(fp, transfer_syntax: str) -> tuple[str, str, str, str]:
    """(study, series, sop instance, sop class) UIDs, parsing only the elements up to
    SeriesInstanceUID (pixel data is never read). ``fp`` is at the dataset's first byte."""
    return _parse_header(fp, transfer_syntax)[0]


def _parse_header(fp, transfer_syntax: str) -> tuple[tuple[str, str, str, str], bool]:
    """``_read_header_from`` and whether parsing reached an element after SeriesInstanceUID
    (False: the dataset, or the bytes given, ended before)."""
    ts = UID(transfer_syntax)
    if ts == DeflatedExplicitVRLittleEndian:
        fp = BytesIO(zlib.decompressobj(-zlib.MAX_WBITS).decompress(fp.read()))
    reached = False

    def stop(tag, vr, length) -> bool:
        nonlocal reached
        if tag > _LAST_HEADER_TAG:
            reached = True
        return reached

    ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=stop)
    uids = (
        ds.get("StudyInstanceUID", ""), ds.get("SeriesInstanceUID", ""),
        ds.get("SOPInstanceUID", ""), ds.get("SOPClassUID", ""),
    )
    return uids, reached


def _skip_file_meta(fp) -> None:
    """Move ``fp`` (at the start of a Part 10 file written by pynetdicom) to the dataset."""
    fp.seek(128 + 4)
    # (0002,0000) UL File Meta Information Group Length, explicit VR LE: skip the group
    group_length = fp.read(12)
    if len(group_length) != 12 or group_length[:6] != b"\x02\x00\x00\x00UL":
        raise ValueError("the received file has no file meta group length")
    fp.seek(int.from_bytes(group_length[8:12], "little"), 1)


class _Received:
    """The received instance as a Part 10 file: either streamed to disk by pynetdicom while
    it arrived (``STORE_RECV_CHUNKED_DATASET``, the receiver's mode: a temp file in
    incoming/, still open, see ``_IncomingFile``) or, for callers that keep datasets in
    memory, the encoded bytes."""

    def __init__(self, event) -> None:
        self.event = event
        path = getattr(event.request, "_dataset_path", None)
        self.temp_path: Path | None = Path(path) if path else None
        self.chunks: tuple = ()
        self.head = b""
        self.fd: int | None = None
        stream = getattr(event.request, "_dataset_file", None)
        error = getattr(stream, "error", None)
        if error is not None:
            raise error
        if self.temp_path is None:
            meta = BytesIO()
            meta.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(meta, event.file_meta, enforce_standard=True)
            self.chunks = (meta.getvalue(), event.request.DataSet.getbuffer())
            self.size = len(self.chunks[0]) + len(self.chunks[1])
        elif isinstance(stream, _IncomingFile) and not stream.closed:
            self.size = stream.size
            self.head = bytes(stream.head)
            self.fd = stream.fileno()
        else:
            self.size = self.temp_path.stat().st_size

    def header(self) -> tuple[str, str, str, str]:
        ts = self.event.context.transfer_syntax
        if self.temp_path is None:
            stream = self.event.request.DataSet
            stream.seek(0)
            return _read_header_from(stream, ts)
        if self.head:
            try:
                fp = BytesIO(self.head)
                _skip_file_meta(fp)
                uids, reached = _parse_header(fp, ts)
                if reached or len(self.head) >= self.size:
                    return uids
            except Exception:
                if len(self.head) >= self.size:
                    raise
            # the header goes on past the bytes kept in memory: read the file
        with open(self.temp_path, "rb") as fp:
            _skip_file_meta(fp)
            return _read_header_from(fp, ts)

    def same_as(self, path: Path) -> bool:
        try:
            if path.stat().st_size != self.size:
                return False
            existing = path.read_bytes()
        except OSError:
            return False
        if self.temp_path is not None:
            return existing == self.temp_path.read_bytes()
        head = len(self.chunks[0])
        return existing[:head] == self.chunks[0] and memoryview(existing)[head:] == self.chunks[1]

    def commit_to(self, spool: Spool, path: Path) -> None:
        if self.temp_path is None:
            write_atomically(path, *self.chunks)
        else:
            spool.commit_file(self.temp_path, path, fd=self.fd)

    def quarantine(self, spool: Spool, reason: str):
        if self.temp_path is not None and self.temp_path.exists():
            return spool.quarantine_file(self.temp_path, reason, fd=self.fd)
        chunks = self.chunks or (self.event.request.DataSet.getvalue(),)
        return spool.quarantine(chunks, reason)


def handle_store(event, ctx: StoreContext) -> int:
    """EVT_C_STORE handler: spool, record, then answer. Returns a C-STORE status."""
    req = event.request
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    received: _Received | None = None
    try:
        try:
            received = _Received(event)
            sop_uid = sanitize_uid(req.AffectedSOPInstanceUID, "Affected SOP Instance UID")
            sop_class = sanitize_uid(req.AffectedSOPClassUID, "Affected SOP Class UID")
            study, series, ds_sop, ds_class = received.header()
            study = sanitize_uid(study, "StudyInstanceUID")
            series = sanitize_uid(series, "SeriesInstanceUID")
        except InvalidUID as exc:
            raise _Refused(STATUS_CANNOT_UNDERSTAND, str(exc)) from exc
        except OSError:
            raise
        except Exception as exc:  # pydicom decodes lazily: any parse error lands here
            raise _Refused(STATUS_CANNOT_UNDERSTAND, f"cannot read the dataset: {exc!r}") from exc
        if str(ds_sop).strip() != sop_uid or str(ds_class).strip() != sop_class:
            raise _Refused(
                STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"dataset SOP class/instance ({ds_class}, {ds_sop}) differ from the request's "
                f"({sop_class}, {sop_uid})",
            )
        path = ctx.spool.instance_path(study, series, sop_uid)
        ctx.spool.check_free_space(0 if received.temp_path else received.size)
        replaced = False
        if path.exists():
            if received.same_as(path) and ctx.store.instance(sop_uid) is not None:
                LOG.info("series %s: duplicate instance %s (identical), nothing to do",
                         series, sop_uid)
                return STATUS_SUCCESS
            replaced = True
        received.commit_to(ctx.spool, path)
        now = time.time()
        ctx.store.record_instance(
            InstanceRecord(sop_uid, series, study, sop_class, str(path), received.size, now,
                           calling_ae),
            replaced=replaced,
        )
        if replaced:
            LOG.warning("series %s: instance %s received again with different content; "
                        "replaced", series, sop_uid)
    except _Refused as refusal:
        _quarantine(ctx, received, event, refusal.reason)
        return refusal.status
    except OutOfSpace as exc:
        LOG.error("refusing C-STORE from %s: out of space: %s", calling_ae, exc)
        return STATUS_OUT_OF_RESOURCES
    except OSError as exc:  # ENOSPC, EIO...: nothing was committed, the temp file is gone
        LOG.error("refusing C-STORE from %s: cannot write: %s", calling_ae, exc)
        return STATUS_OUT_OF_RESOURCES
    except Exception:
        LOG.exception("bug while storing an instance from %s", calling_ae)
        _quarantine(ctx, received, event, "internal error while storing (see the node's log)")
        return STATUS_CANNOT_UNDERSTAND
    if ctx.on_instance is not None:
        try:
            ctx.on_instance(StoredInstance(series, study, sop_uid, sop_class, now))
        except Exception:  # the instance is safe; the tracker re-arms from the store at start
            LOG.exception("series %s: series tracker failed on instance %s", series, sop_uid)
    return STATUS_SUCCESS


def _quarantine(ctx: StoreContext, received: "_Received | None", event, reason: str) -> None:
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    try:
        if received is None:
            kept = ctx.spool.quarantine((event.request.DataSet.getvalue(),), reason)
        else:
            kept = received.quarantine(ctx.spool, f"from {calling_ae}: {reason}")
        LOG.warning("refused C-STORE from %s: %s (kept as %s)", calling_ae, reason, kept.path)
    except Exception as exc:
        LOG.error("refused C-STORE from %s: %s (could not quarantine: %s)",
                  calling_ae, reason, exc)


def make_ae(settings: Settings) -> AE:
    """An AE configured from ``settings.network`` with every accepted presentation context."""
    net = settings.network
    ae = configured_ae(net)
    ae.maximum_associations = net.max_associations
    ae.require_called_aet = True
    ae.require_calling_aet = list(net.allowed_calling_ae_titles)
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for sop_class in IMAGE_SOP_CLASSES + DERIVED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


class _Server(ThreadedAssociationServer):
    daemon_threads = True
    incoming_dir: Path | None = None


_streaming_enabled = False


def _enable_streamed_reception() -> None:
    """Make pynetdicom stream each received dataset to a Part 10 temp file while it arrives
    (``STORE_RECV_CHUNKED_DATASET``), in the incoming/ directory of the receiving node, so
    the write overlaps the transfer and the handler only fsyncs and renames.

    Process-wide pynetdicom settings: ``_config.STORE_RECV_CHUNKED_DATASET`` and the temp
    file factory of ``pynetdicom.dimse_messages``. The factory uses the directory set on the
    DUL thread by ``node._fastscp`` (the system temp dir for other acceptors)."""
    global _streaming_enabled
    if _streaming_enabled:
        return
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _incoming_temp_file
    _streaming_enabled = True


def _incoming_temp_file(*, suffix: str = "", **_kwargs) -> "_IncomingFile":
    """Replaces ``tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=...)`` in
    pynetdicom's DIMSE decoder."""
    directory = getattr(threading.current_thread(), "incoming_dir", None)
    return _IncomingFile(Path(directory or tempfile.gettempdir()), suffix)


#: Bytes of the start of each received file kept in memory, so that the handler reads the
#: header (file meta + elements up to SeriesInstanceUID) without re-reading the file.
_HEAD_BYTES = 16384


class _IncomingFile:
    """The temp file (in incoming/) that pynetdicom streams a received dataset into: a raw
    file descriptor written with ``os.write`` (no Python-level buffering or wrapper), the
    first ``_HEAD_BYTES`` kept in ``head`` and the byte count in ``size``. Durability comes
    from the handler's fsync of ``fileno()`` (``Spool.commit_file``); ``flush()`` does
    nothing (starting the writeback early with ``sync_file_range`` made reception slower,
    with and without the fsync: benchmarks/receive.py).

    A write error (ENOSPC, EIO) must not escape into pynetdicom's DUL thread (it would abort
    the association): it is kept in ``error``, the partial file is removed at once (freeing
    the space) and the rest of the instance is discarded; the C-STORE handler then answers
    0xA700 and the association goes on."""

    def __init__(self, directory: Path, suffix: str = "") -> None:
        while True:
            name = str(directory / f".rx-{os.urandom(8).hex()}{suffix}")
            try:
                self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                   0o600)
                break
            except FileExistsError:
                continue
        self.name = name
        self.file = self  # pynetdicom calls ``.file.flush()``
        self.error: OSError | None = None
        self.size = 0
        self.head = bytearray()

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        try:
            os.unlink(self.name)
        except OSError:
            pass
        self._close_fd()

    def write(self, data) -> int:
        view = memoryview(data)
        n = len(view)
        if self.error is None:
            if len(self.head) < _HEAD_BYTES:
                self.head += view[:_HEAD_BYTES - len(self.head)]
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                self._failed(exc)
                return n
            self.size += n
        return n

    def flush(self) -> None:
        pass

    def _close_fd(self) -> OSError | None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                return exc
        return None

    def close(self) -> None:
        exc = self._close_fd()
        if exc is not None and self.error is None:
            self.error = exc


class Receiver:
    """The SCP: ``start()`` listens (port 0 picks a free one, see ``port``), ``stop()``."""

    def __init__(self, settings: Settings, ctx: StoreContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver not started")
        return self._server.server_address[1]

    def start(self) -> None:
        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-message debug formatting
        ae = make_ae(self.settings)
        handlers = [
            (evt.EVT_C_STORE, handle_store, [self.ctx]),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
        ]
        net = self.settings.network
        _enable_streamed_reception()
        self._server = ae.make_server(
            (net.bind_address, net.port), evt_handlers=handlers, server_class=_Server,
            request_handler=FastRequestHandler,
        )
        self._server.incoming_dir = self.ctx.spool.incoming_dir
        ae._servers.append(self._server)  # as AE.start_server does; shutdown() expects it
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="receiver", daemon=True,
        )
        self._thread.start()
        LOG.info("receiving as %s on %s:%s", net.ae_title, net.bind_address, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for assoc in list(self._server.active_associations):
                assoc.abort()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
