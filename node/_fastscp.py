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

Housekeeping (ARTIM and idle timers, kill flags, release/abort checks) still runs at least every
``_HOUSEKEEPING_S`` seconds, as before. Used only by node.receiver through ``FastRequestHandler``.
"""

from __future__ import annotations

import queue
import select
import socket
import time
from copy import deepcopy
from datetime import datetime

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider, LOGGER as DUL_LOGGER
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler

_HOUSEKEEPING_S = 0.005


class _FastSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        nr_read = 0
        sock = self.socket
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:
                del view
                del buf[nr_read:]
                return buf
            nr_read += n
        return buf


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

    def send_pdu(self, primitive) -> None:
        super().send_pdu(primitive)
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
                    sleep = True
                    continue
                self.state_machine.do_action(event)
                sleep = False
        finally:
            self._wake_r.close()
            self._wake_w.close()


class _FastAssociation(Association):
    def __init__(self, ae, mode, server=None) -> None:
        super().__init__(ae, mode)
        self._server = server
        self.dul = _FastDUL(self)

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
