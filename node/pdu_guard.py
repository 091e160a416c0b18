"""A guard on the receiver's accepted sockets: no allocation from an unchecked PDU length.

``GuardedConnection`` wraps an accepted TCP (or TLS) socket and follows the DICOM Upper
Layer byte stream as pynetdicom reads it (PS3.8 9.3: every PDU starts with a 6-byte header,
type, reserved, 4-byte big-endian length). When a header is complete it checks the length
against the limit for its type *before* any byte of the body is read:

* A-ASSOCIATE-RQ (0x01): ``MAX_ASSOCIATE_RQ_BYTES`` (before negotiation there is no agreed
  size; a real request with 128 presentation contexts is well under 64 KiB);
* P-DATA-TF (0x04): the maximum PDU length the node announces (``network.max_pdu_bytes``;
  0, "unlimited" in DICOM, is capped at ``MAX_UNLIMITED_PDATA_BYTES``);
* anything else (release, abort, an association PDU an acceptor never receives):
  ``MAX_OTHER_PDU_BYTES``.

A PDU over its limit gets an A-ABORT (source: service provider, reason: invalid PDU
parameter value) and the connection is closed (``ConnectionAbortedError``, which pynetdicom
treats as a closed transport).

Time: once the first byte of a PDU has arrived, the whole PDU must arrive within
``pdu_timeout_s`` (``network.pdu_timeout_s``); otherwise the read raises ``TimeoutError`` and
the connection is closed. A half-sent request (or a peer dribbling one byte at a time) holds
an association slot for at most that long. Between PDUs pynetdicom's own timers apply
(ARTIM = ``network.acse_timeout_s`` before the association, the idle timer =
``network.network_timeout_s`` after).

Only the ``socket`` interface is used; nothing of pynetdicom's internals. The proxy reports
the wrapped socket's class (``__class__``) so that pynetdicom's ``isinstance(sock,
ssl.SSLSocket)`` check (pending TLS bytes) still holds.
"""

from __future__ import annotations

import logging
import ssl
import struct
import time

LOG = logging.getLogger(__name__)

PDU_HEADER_BYTES = 6
A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
MAX_ASSOCIATE_RQ_BYTES = 1024 * 1024
MAX_OTHER_PDU_BYTES = 64 * 1024
MAX_UNLIMITED_PDATA_BYTES = 64 * 1024 * 1024
#: A-ABORT-RQ, source 2 (service provider), reason 6 (invalid PDU parameter value)
A_ABORT_INVALID_PARAMETER = bytes([0x07, 0x00, 0, 0, 0, 4, 0, 0, 0x02, 0x06])


class PduTooLong(ConnectionAbortedError):
    """A PDU header claimed more than the limit for its type (the connection is aborted)."""


def pdu_limit(pdu_type: int, max_pdu_bytes: int) -> int:
    """The largest PDU body (the header's length field) accepted for ``pdu_type``."""
    if pdu_type == A_ASSOCIATE_RQ:
        return MAX_ASSOCIATE_RQ_BYTES
    if pdu_type == P_DATA_TF:
        return max_pdu_bytes if max_pdu_bytes > 0 else MAX_UNLIMITED_PDATA_BYTES
    return MAX_OTHER_PDU_BYTES


class GuardedConnection:
    """A socket proxy that checks each PDU's length before its body is read (module doc)."""

    def __init__(self, sock, peer: tuple, max_pdu_bytes: int, pdu_timeout_s: float) -> None:
        self._sock = sock
        self._pdu_timeout_s = pdu_timeout_s
        self._deadline: float | None = None  # the current PDU must be complete by then
        self._peer = peer
        self._max_pdu_bytes = max_pdu_bytes
        self._header = bytearray()
        self._remaining = 0  # body bytes of the current PDU not yet read
        self._handshake_pending = isinstance(sock, ssl.SSLSocket)

    @property
    def __class__(self):  # noqa: D105 - see the module doc (isinstance for SSLSocket)
        return self._sock.__class__

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._deadline is None:  # the first byte of a PDU (or of the TLS handshake)
            self._deadline = time.monotonic() + self._pdu_timeout_s
        left = self._deadline - time.monotonic()
        if left <= 0:
            self._timed_out()
        self._sock.settimeout(left)
        if self._handshake_pending:
            self._handshake()
        try:
            if self._remaining:
                data = self._sock.recv(min(bufsize, self._remaining), flags)
                self._remaining -= len(data)
                if not self._remaining:
                    self._deadline = None
                return data
            # at a PDU boundary: the next bytes are (part of) a header
            data = self._sock.recv(min(bufsize, PDU_HEADER_BYTES - len(self._header)), flags)
        except TimeoutError:
            self._timed_out()
        self._header += data
        if len(self._header) == PDU_HEADER_BYTES:
            pdu_type, _, length = struct.unpack(">BBL", self._header)
            self._header.clear()
            limit = pdu_limit(pdu_type, self._max_pdu_bytes)
            if length > limit:
                self._abort(f"PDU type 0x{pdu_type:02X} claims {length} bytes, "
                            f"more than the {limit} accepted")
            self._remaining = length
            if not length:
                self._deadline = None
        return data

    def recv_into(self, *args, **kwargs):  # pynetdicom reads with recv(); keep one path
        raise NotImplementedError("GuardedConnection reads with recv() only")

    def makefile(self, *args, **kwargs):
        raise NotImplementedError("GuardedConnection reads with recv() only")

    def _timed_out(self) -> None:
        LOG.warning("closing the connection from %s:%s: a PDU did not arrive in full within "
                    "network.pdu_timeout_s (%g s)", self._peer[0], self._peer[1],
                    self._pdu_timeout_s)
        raise TimeoutError(f"PDU not complete within {self._pdu_timeout_s:g} s")

    def _handshake(self) -> None:
        """The TLS handshake, on the association's thread (not the accept loop), bounded by
        the socket timeout; a failure (no or untrusted client certificate) is logged."""
        self._handshake_pending = False
        try:
            self._sock.do_handshake()
        except (OSError, ssl.SSLError) as exc:
            LOG.warning("TLS handshake with %s:%s failed: %s", self._peer[0], self._peer[1], exc)
            raise

    def _abort(self, reason: str) -> None:
        LOG.warning("aborting the connection from %s:%s: %s", self._peer[0], self._peer[1],
                    reason)
        try:
            self._sock.sendall(A_ABORT_INVALID_PARAMETER)
        except OSError:
            pass
        raise PduTooLong(reason)
