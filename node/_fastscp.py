"""Event-driven reactors for pynetdicom's acceptor side (pynetdicom 3.0.x).

pynetdicom's reactors poll: the DUL thread sleeps 1 ms whenever it finds nothing to do and
the association thread sleeps 1 ms on every loop, so each C-STORE round trip pays ~2 ms of
sleeps; the socket is read 4 KiB at a time. These subclasses keep pynetdicom's state machine
and logic untouched and only change how the threads wait:

* ``_FastDUL`` blocks in ``select`` on the peer socket *and* a wake-up socket written by
  ``send_pdu``, so it reacts at once both to incoming PDUs and to a response to send.
* ``_FastAssociation._run_reactor`` blocks on the DIMSE message queue's condition instead of
  sleeping, so a completed C-STORE request is served as soon as its last fragment arrives.
* ``_FastSocket.recv`` reads a whole PDU with ``recv_into`` into one buffer.
* P-DATA-TF PDUs received while the association is established (Sta6, nothing else queued,
  no handler bound to the PDU/FSM notification events) skip the PDU objects, the event queue
  and the state machine (whose action, DT-2, would only pass them on): they are read into a
  buffer reused for the whole association and their PDVs go straight to the DIMSE decoder;
  the non-final fragments of a dataset being streamed to a file are written from that buffer
  without a copy. Anything else takes pynetdicom's path.
* Complete C-STORE and C-ECHO requests are served on the DUL thread as soon as they are
  decoded instead of being handed to the association thread through the DIMSE message queue
  (two thread wake-ups per request saved); the response is queued by ``send_pdu`` and sent by
  the same thread on its next turn. Other requests (none are accepted by node.receiver) still
  go through the queue. While a handler runs the DUL thread reads nothing more, which costs
  nothing here: a C-STORE SCU waits for the response before sending the next request.

Housekeeping (ARTIM and idle timers, kill flags, release/abort checks) still runs at least every
``_HOUSEKEEPING_S`` seconds, as before. Used only by node.receiver through ``FastRequestHandler``.
"""

from __future__ import annotations

import queue
import select
import socket
import struct
import threading
import time
from copy import deepcopy
from datetime import datetime

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider, LOGGER as DUL_LOGGER
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

_HOUSEKEEPING_S = 0.005
_P_DATA_TF = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))
#: Notification events triggered on pynetdicom's per-PDU path: with a handler bound to any of
#: them the fast P-DATA path is not taken (so the handlers still see every PDU).
_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)


class _FastSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        with memoryview(buf) as view:
            nr_read = self.recv_into(view)
        del buf[nr_read:]
        return buf

    def recv_into(self, view: memoryview) -> int:
        """Fill ``view``; returns the number of bytes read (short only if the peer closed)."""
        nr_bytes = len(view)
        nr_read = 0
        sock = self.socket
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:
                break
            nr_read += n
        return nr_read


class _FastDUL(DULServiceProvider):
    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Thread.__init__ bound the original run_reactor as the target: rebind to ours.
        self._target = self.run_reactor
        # Where node.receiver streams received datasets (read by its temp file factory).
        self.incoming_dir = getattr(getattr(assoc, "_server", None), "incoming_dir", None)
        self._rx_buffer = bytearray(0)  # P-DATA-TF bodies, reused (grown when needed)
        self._fast_handled = False

    def send_pdu(self, primitive) -> None:
        super().send_pdu(primitive)
        if threading.current_thread() is not self:  # on this thread: sent on the next turn
            self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\x00")
        except (BlockingIOError, OSError):
            pass  # already signalled (buffer full) or closed

    def _wait(self) -> None:
        waitables = [self._wake_r]
        sock = getattr(self.socket, "socket", None)
        if sock is not None:
            waitables.append(sock)
        try:
            ready, _, _ = select.select(waitables, [], [], _HOUSEKEEPING_S)
        except (OSError, ValueError):
            time.sleep(_HOUSEKEEPING_S)
            return
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _read_exactly(self, view: memoryview) -> bool:
        """Fill ``view`` from the socket; on a closed or short read log it, queue Evt17
        (transport closed) and return False, as pynetdicom's own reader does."""
        try:
            nr_read = self.socket.recv_into(view)
        except (OSError, TimeoutError) as exc:
            DUL_LOGGER.error("Connection closed before the entire PDU was received")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return False
        if nr_read != len(view):
            DUL_LOGGER.error(
                f"The received PDU is shorter than expected ({nr_read} of {len(view)} bytes)"
            )
            self.event_queue.put("Evt17")
            return False
        return True

    def _read_pdu_data(self) -> None:
        """``DULServiceProvider._read_pdu_data`` with the fast P-DATA-TF path (module doc)."""
        try:
            header = self.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            DUL_LOGGER.error("Connection closed before the entire PDU was received")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(header) != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            DUL_LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        if pdu_type == _P_DATA_TF and self._fast_path_open():
            self._read_p_data_fast(pdu_length)
            return
        body = bytearray(pdu_length)
        with memoryview(body) as view:
            if not self._read_exactly(view):
                return
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
            self.event_queue.put(event)
        except Exception as exc:
            DUL_LOGGER.error("Unable to decode the received PDU data")
            DUL_LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _fast_path_open(self) -> bool:
        if self.state_machine.current_state != "Sta6" or self.event_queue.qsize():
            return False
        handlers = self.assoc._handlers
        return not any(handlers.get(event) for event in _PDU_EVENTS)

    def _read_p_data_fast(self, pdu_length: int) -> None:
        """Sta6 + Evt10 (DT-2) for one P-DATA-TF PDU whose 6-byte header was read."""
        if len(self._rx_buffer) < pdu_length:
            self._rx_buffer = bytearray(pdu_length)
        body = memoryview(self._rx_buffer)[:pdu_length]
        try:
            if not self._read_exactly(body):
                return
            self._fast_handled = True
            self._deliver_pdvs(body)
        finally:
            body.release()

    def _deliver_pdvs(self, body: memoryview) -> None:
        """Pass the PDVs of a P-DATA-TF body to the DIMSE decoder, in order; a non-final
        dataset fragment of a message being streamed to a file is written directly."""
        dimse = self.assoc.dimse
        pending: list[list] = []  # [context ID, PDV], as P_DATA wants them
        offset, end_of_pdu = 0, len(body)
        while offset < end_of_pdu:
            if end_of_pdu - offset < 6:
                return self._invalid_pdu("truncated PDV item")
            item_length = int.from_bytes(body[offset:offset + 4], "big")
            end = offset + 4 + item_length
            if item_length < 2 or end > end_of_pdu:
                return self._invalid_pdu(f"invalid PDV item length {item_length}")
            context_id = body[offset + 4]
            control = body[offset + 5]
            message = dimse.message
            stream = getattr(message, "_data_set_file", None) if message is not None else None
            if not pending and stream is not None and control & 0x03 == 0:
                stream.write(body[offset + 6:end])
                stream.flush()
            else:
                pending.append([context_id, bytes(body[offset + 5:end])])
            offset = end
        if pending:
            primitive = P_DATA()
            primitive.presentation_data_value_list = pending
            dimse.receive_primitive(primitive)

    def _invalid_pdu(self, reason: str) -> None:
        DUL_LOGGER.error(f"Unable to decode the received P-DATA-TF PDU: {reason}")
        self.event_queue.put("Evt19")

    def run_reactor(self) -> None:  # same logic as DULServiceProvider.run_reactor
        self._idle_timer.start()
        sleep = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    sleep = True
                if sleep:
                    self._wait()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:
                    DUL_LOGGER.error("Exception in DUL.run(), aborting association")
                    DUL_LOGGER.exception(exc)
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = 0x02
                    abort_pdu.reason_diagnostic = 0x00
                    self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    # After a P-DATA-TF taken by the fast path, look again at once (a
                    # response to send, the next PDU) before waiting.
                    sleep = not self._fast_handled
                    self._fast_handled = False
                    continue
                self.state_machine.do_action(event)
                sleep = False
        finally:
            self._wake_r.close()
            self._wake_w.close()


class _InlineMessageQueue(queue.Queue):
    """The DIMSE message queue: C-STORE and C-ECHO requests decoded on the DUL thread are
    served there at once (module doc); anything else is queued for the association thread."""

    def __init__(self, assoc: "Association") -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        context_id, msg = item
        assoc = self._assoc
        if (
            isinstance(msg, (C_STORE, C_ECHO))
            and threading.current_thread() is assoc.dul
            and msg.is_valid_request
        ):
            assoc._serve_request(msg, context_id)
            return
        super().put(item, block, timeout)


class _FastAssociation(Association):
    def __init__(self, ae, mode, server=None) -> None:
        super().__init__(ae, mode)
        self._server = server
        self.dul = _FastDUL(self)
        self.dimse.msg_queue = _InlineMessageQueue(self)

    def _wait_for_message(self) -> None:
        msg_queue = self.dimse.msg_queue
        with msg_queue.not_empty:
            if not msg_queue._qsize():
                msg_queue.not_empty.wait(_HOUSEKEEPING_S)

    def _run_reactor(self) -> None:  # same logic as Association._run_reactor
        self._is_paused = False
        while not self._kill:
            self._wait_for_message()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class FastRequestHandler(RequestHandler):
    """``RequestHandler._create_association`` with the event-driven classes above."""

    def _create_association(self) -> Association:
        assoc = _FastAssociation(self.ae, MODE_ACCEPTOR, self.server)
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = _FastSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc
