"""The C-STORE / C-ECHO SCP: receives instances into the spool, durably, before answering.

``handle_store`` answers success (0x0000) only after the Part 10 file is fsynced under its
final name and its row is committed. Refusals use named statuses and are logged with the
reason; refused bytes are quarantined, never dropped.

Duplicates (same SOP Instance UID): identical bytes → success, nothing changes; different
bytes → the new version replaces the old one atomically (``os.replace``), the row is updated
and the series is reopened (a corrected resend is the newer truth; results get a new revision).

Network exposure (``_Server.get_request``, node.pdu_guard): every PDU length is checked
before its body is read (over the limit: A-ABORT), a started PDU must arrive within
``network.pdu_timeout_s``, the TLS handshake (``network.tls``) runs on the connection's own
thread, and a connection gone before its A-ASSOCIATE-RQ frees its association slot at once.
An instance over ``storage.max_instance_mb`` is refused with 0xA700 and nothing of it is
kept. Every association leaves one INFO line (node.association_log). The only hook below
pynetdicom's public API is node._pynetdicom_adapter (pinned to one pynetdicom version).
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from node import _pynetdicom_adapter, tls
from node.ae import configured_ae
from node.association_log import AssociationLog
from node.config import Settings
from node.pdu_guard import GuardedConnection
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


class InstanceTooLarge(Exception):
    """The instance goes over ``storage.max_instance_mb``: refused, nothing kept."""


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
    #: refuse instances larger than this (``storage.max_instance_mb``); None: no limit
    max_instance_bytes: int | None = None
    #: counts for the per-association log line (node.association_log)
    assoc_log: AssociationLog | None = None


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

    def __init__(self, event, max_bytes: int | None = None) -> None:
        self.event = event
        try:
            path = event.dataset_path  # set when the dataset was streamed to a file
        except AttributeError:
            path = None
        self.temp_path: Path | None = Path(path) if path else None
        self.chunks: tuple = ()
        self.head = b""
        self.fd: int | None = None
        stream = _IncomingFile.open_files.get(str(path)) if path else None
        error = getattr(stream, "error", None)
        if error is not None:
            raise error
        if self.temp_path is None:
            meta = BytesIO()
            meta.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(meta, event.file_meta, enforce_standard=True)
            self.chunks = (meta.getvalue(), event.request.DataSet.getbuffer())
            self.size = len(self.chunks[0]) + len(self.chunks[1])
            if max_bytes is not None and self.size > max_bytes:
                raise InstanceTooLarge(_too_large(max_bytes))
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


def _too_large(max_bytes: int) -> str:
    return f"instance over storage.max_instance_mb ({max_bytes // (1024 * 1024)} MB)"


def handle_store(event, ctx: StoreContext) -> Dataset:
    """EVT_C_STORE handler: spool, record, then answer. Returns the C-STORE response's
    Status and, for a refusal, an Error Comment (0000,0902) with the reason."""
    status, series, reason = _store(event, ctx)
    if ctx.assoc_log is not None:
        ctx.assoc_log.stored(event.assoc, series, status == STATUS_SUCCESS)
    rsp = Dataset()
    rsp.Status = status
    if reason:
        rsp.ErrorComment = reason[:64]  # LO
    return rsp


def _store(event, ctx: StoreContext) -> tuple[int, str | None, str | None]:
    """(status, series UID or None, reason of a refusal or None)."""
    req = event.request
    calling_ae = str(event.assoc.requestor.ae_title).strip()
    received: _Received | None = None
    series = None
    try:
        try:
            received = _Received(event, ctx.max_instance_bytes)
            sop_uid = sanitize_uid(req.AffectedSOPInstanceUID, "Affected SOP Instance UID")
            sop_class = sanitize_uid(req.AffectedSOPClassUID, "Affected SOP Class UID")
            study, series, ds_sop, ds_class = received.header()
            study = sanitize_uid(study, "StudyInstanceUID")
            series = sanitize_uid(series, "SeriesInstanceUID")
        except InvalidUID as exc:
            raise _Refused(STATUS_CANNOT_UNDERSTAND, str(exc)) from exc
        except (OSError, InstanceTooLarge):
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
                return STATUS_SUCCESS, series, None
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
        return refusal.status, None, refusal.reason
    except InstanceTooLarge as exc:  # the partial file is already gone (_IncomingFile)
        LOG.warning("refused C-STORE from %s: %s (nothing kept)", calling_ae, exc)
        if received is not None and received.temp_path is not None:
            received.temp_path.unlink(missing_ok=True)
        return STATUS_OUT_OF_RESOURCES, None, str(exc)
    except OutOfSpace as exc:
        LOG.error("refusing C-STORE from %s: out of space: %s", calling_ae, exc)
        return STATUS_OUT_OF_RESOURCES, None, "out of space"
    except OSError as exc:  # ENOSPC, EIO...: nothing was committed, the temp file is gone
        LOG.error("refusing C-STORE from %s: cannot write: %s", calling_ae, exc)
        return STATUS_OUT_OF_RESOURCES, None, "cannot write"
    except Exception:
        LOG.exception("bug while storing an instance from %s", calling_ae)
        _quarantine(ctx, received, event, "internal error while storing (see the node's log)")
        return STATUS_CANNOT_UNDERSTAND, None, "internal error"
    if ctx.on_instance is not None:
        try:
            ctx.on_instance(StoredInstance(series, study, sop_uid, sop_class, now))
        except Exception:  # the instance is safe; the tracker re-arms from the store at start
            LOG.exception("series %s: series tracker failed on instance %s", series, sop_uid)
    return STATUS_SUCCESS, series, None


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
    0xA700 and the association goes on. Going over ``max_bytes`` is handled the same way
    (``InstanceTooLarge``): nothing of an instance over ``storage.max_instance_mb`` is kept.

    ``open_files`` finds the file of a received dataset by name (``event.dataset_path``);
    a file whose association ended before the handler ran (an abort mid-dataset) is closed
    and removed when pynetdicom drops it."""

    open_files: "weakref.WeakValueDictionary[str, _IncomingFile]" = weakref.WeakValueDictionary()

    def __init__(self, directory: Path, suffix: str = "", max_bytes: int | None = None) -> None:
        self._fd = -1
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
        self.error: Exception | None = None
        self.max_bytes = max_bytes
        _IncomingFile.open_files[name] = self
        self.size = 0
        self.head = bytearray()

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __del__(self) -> None:
        if self._fd >= 0:  # never handed to the handler (association ended mid-dataset)
            self._close_fd()
            try:
                os.unlink(self.name)
            except OSError:
                pass

    def _failed(self, exc: Exception) -> None:
        self.error = exc
        try:
            os.unlink(self.name)
        except OSError:
            pass
        self._close_fd()

    def write(self, data) -> int:
        view = memoryview(data)
        n = len(view)
        if self.error is None and self.max_bytes is not None and self.size + n > self.max_bytes:
            self._failed(InstanceTooLarge(_too_large(self.max_bytes)))
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


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with ``get_request`` (a ``socketserver`` method) doing
    what every accepted connection needs before pynetdicom sees it: the read timeout for
    stalled and partial PDUs (``network.pdu_timeout_s``), TCP_NODELAY, TLS with the
    handshake left to the connection's own thread (a client that stalls its handshake cannot
    block the accept loop) and the PDU length guard (node.pdu_guard)."""

    daemon_threads = True
    pdu_timeout_s: float = 30.0
    max_pdu_bytes: int = 0

    def get_request(self):
        sock, address = self.socket.accept()
        try:
            sock.settimeout(self.pdu_timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False)
        except OSError:
            sock.close()
            raise
        return GuardedConnection(sock, address, self.max_pdu_bytes, self.pdu_timeout_s), address

    def shutdown(self) -> None:
        """Stop serving and close the listening socket (``socketserver``'s shutdown: this
        server was made with ``AE.make_server``, not registered with the AE)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _closed_before_request(event) -> None:
    """The connection is gone (state machine back to Sta1: closed by the peer, by the PDU
    guard, or after an A-ABORT for an invalid PDU) before any A-ASSOCIATE-RQ was read: free
    the association slot now rather than after the ACSE timeout (node._pynetdicom_adapter).
    """
    if event.next_state == "Sta1" and event.assoc.requestor.primitive is None:
        _pynetdicom_adapter.end_acceptor_wait(event.assoc)


class Receiver:
    """The SCP: ``start()`` listens (port 0 picks a free one, see ``port``), ``stop()``."""

    def __init__(self, settings: Settings, ctx: StoreContext) -> None:
        self.settings = settings
        self.ctx = ctx
        if ctx.max_instance_bytes is None:
            ctx.max_instance_bytes = settings.storage.max_instance_mb * 1024 * 1024
        if ctx.assoc_log is None:
            ctx.assoc_log = AssociationLog()
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver not started")
        return self._server.server_address[1]

    def _open_incoming(self, suffix: str) -> _IncomingFile:
        return _IncomingFile(self.ctx.spool.incoming_dir, suffix, self.ctx.max_instance_bytes)

    def start(self) -> None:
        _config.LOG_HANDLER_LEVEL = "none"  # documented option: no per-message debug formatting
        ae = make_ae(self.settings)
        handlers = [
            (evt.EVT_C_STORE, handle_store, [self.ctx]),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_CONN_CLOSE, self.ctx.assoc_log.on_close),
            (evt.EVT_RELEASED, self.ctx.assoc_log.on_end),
            (evt.EVT_ABORTED, self.ctx.assoc_log.on_end),
            (evt.EVT_REJECTED, self.ctx.assoc_log.on_end),
            (evt.EVT_FSM_TRANSITION, _closed_before_request),
        ]
        net = self.settings.network
        ssl_context = tls.server_context(net.tls) if net.tls is not None else None
        self._server = ae.make_server(
            (net.bind_address, net.port), evt_handlers=handlers, server_class=_Server,
            ssl_context=ssl_context,
        )
        self._server.pdu_timeout_s = net.pdu_timeout_s
        self._server.max_pdu_bytes = net.max_pdu_bytes
        _pynetdicom_adapter.register(self.port, self._open_incoming)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="receiver", daemon=True,
        )
        self._thread.start()
        LOG.info("receiving as %s on %s:%s%s", net.ae_title, net.bind_address, self.port,
                 " (DICOM TLS)" if ssl_context is not None else "")

    def stop(self) -> None:
        if self._server is not None:
            _pynetdicom_adapter.unregister(self.port)
            self._server.shutdown()
            for assoc in list(self._server.active_associations):
                assoc.abort()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.ctx.assoc_log.flush()   # connections that closed without saying how
