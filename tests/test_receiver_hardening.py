"""The receiver against hostile and broken peers: raw sockets against the real node
(``lungnode run`` in a child process) and against an in-process Receiver.

* a 6-byte PDU header claiming 4 GB (before and after association) is an A-ABORT, and the
  node's RSS does not grow (figures printed: run with ``-s`` to see them);
* ten half-sent requests hold the association slots only for ``network.pdu_timeout_s``:
  a real dcmtk storescu gets through right after (time printed);
* a peer dribbling one byte at a time is cut off at the PDU deadline;
* an instance over ``storage.max_instance_mb`` is refused with 0xA700 and a reason, and
  nothing of it is kept;
* one INFO line per association, with counts and no patient name or ID.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from node.receiver import (
    STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, Receiver, StoreContext,
)
from node.spool import Spool
from node.store import StateStore
from node_process import NodeProcess
from node_testkit import make_series, make_settings
from peers import echoscu, storescu, wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"
A_ABORT = 0x07
GB4 = b"\xff\xff\xff\xff"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def receiver(tmp_path):
    running = []

    def make(**sections):
        root = tmp_path / f"root{len(running)}"
        settings = make_settings(root, **sections)
        ctx = StoreContext(Spool(root, 0), StateStore(root / "db.sqlite3"))
        rx = Receiver(settings, ctx)
        rx.start()
        running.append(rx)
        return rx

    yield make
    for rx in running:
        rx.stop()


@pytest.mark.slow
def test_hostile_length_headers_are_aborted_without_allocating(tmp_path):
    with NodeProcess(tmp_path / "node") as node:
        pid = node.proc.pid
        assert echoscu(node.port, "LUNGNODE").returncode == 0  # warmed up
        before = rss_mb(pid)
        # before any association: an A-ASSOCIATE-RQ header claiming 4 GB
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            sock.sendall(b"\x01\x00" + GB4)
            answer = read_until_closed(sock, 10)
        assert answer[:1] == bytes([A_ABORT]), answer
        after_rq = rss_mb(pid)
        # inside an established association: a P-DATA-TF header claiming 4 GB
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(CT)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="LUNGNODE")
        assert assoc.is_established
        assoc.dul.socket.socket.sendall(b"\x04\x00" + GB4)
        wait_until(lambda: assoc.is_aborted, 10, what="the node to abort the association")
        after_pdata = rss_mb(pid)
        print(f"\nnode RSS: {before:.1f} MB before, {after_rq:.1f} MB after a 4 GB "
              f"A-ASSOCIATE-RQ header, {after_pdata:.1f} MB after a 4 GB P-DATA-TF header")
        assert after_rq - before < 32 and after_pdata - before < 32
        assert echoscu(node.port, "LUNGNODE").returncode == 0  # still serving
        assert "claims 4294967295 bytes" in node.log_tail(200)


@pytest.mark.slow
def test_half_sent_requests_do_not_shut_out_a_real_scu(tmp_path):
    timeout_s = 2
    files = make_series(tmp_path / "s", 3)
    node = NodeProcess(tmp_path / "node", overrides={
        "network": {"pdu_timeout_s": timeout_s, "max_associations": 10}})
    with node:
        half_open = []
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
            sock.sendall(b"\x01\x00\x00\x00\x01\x00" + b"\x00\x01" + b"\x00" * 20)  # of 256
            half_open.append(sock)
        t0 = time.monotonic()
        attempts = 0

        def stored() -> bool:
            nonlocal attempts
            attempts += 1
            return storescu(files, node.port).returncode == 0

        wait_until(stored, timeout_s + 15, 0.2, "storescu to get through")
        elapsed = time.monotonic() - t0
        print(f"\nstorescu stored after {elapsed:.2f} s ({attempts} attempt(s)) behind ten "
              f"half-sent requests, network.pdu_timeout_s={timeout_s}")
        assert elapsed < timeout_s + 10
        for sock in half_open:  # each one was closed by the node
            assert read_until_closed(sock, 10) == b""
            sock.close()


def test_dribbling_peer_cut_at_the_pdu_deadline(receiver):
    rx = receiver(network={"pdu_timeout_s": 1.5})
    with socket.create_connection(("127.0.0.1", rx.port), timeout=10) as sock:
        sock.sendall(b"\x01\x00\x00\x00\x01\x00")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 10:
            try:
                sock.sendall(b"\x00")  # one byte every 0.2 s: each read is "recent"
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed and elapsed < 5, elapsed
    assert echoscu(rx.port, "LUNGNODE").returncode == 0


def test_instance_over_max_instance_mb_refused_nothing_kept(receiver, tmp_path):
    rx = receiver(storage={"max_instance_mb": 1})
    big = pydicom.dcmread(make_series(tmp_path / "big", 1)[0])
    big.Rows = big.Columns = 1024
    big.PixelData = os.urandom(1024 * 1024 * 2)
    small = pydicom.dcmread(make_series(tmp_path / "small", 1)[0])
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CT)
    assoc = ae.associate("127.0.0.1", rx.port, ae_title="LUNGNODE")
    assert assoc.is_established
    rsp_big = assoc.send_c_store(big)
    rsp_small = assoc.send_c_store(small)
    assoc.release()
    assert int(rsp_big.Status) == STATUS_OUT_OF_RESOURCES
    assert "max_instance_mb" in str(rsp_big.get("ErrorComment", ""))
    assert int(rsp_small.Status) == STATUS_SUCCESS
    spool = rx.ctx.spool
    assert [Path(p).stem for p in rx.ctx.store.known_instance_paths()] == [small.SOPInstanceUID]
    assert len(list(spool.spool_dir.rglob("*.dcm"))) == 1
    assert not list(spool.quarantine_dir.iterdir())
    wait_until(lambda: not list(spool.incoming_dir.iterdir()), 10, what="incoming/ empty")


def test_one_log_line_per_association_without_phi(receiver, tmp_path, caplog):
    rx = receiver()
    files = make_series(tmp_path / "s", 3)
    for p in files:
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = "DOE^JANE", "PID-31337"
        ds.save_as(p)
    with caplog.at_level(logging.INFO):
        assert storescu(files, rx.port, aet="CTSCANNER").returncode == 0
        line = wait_until(
            lambda: next((r.getMessage() for r in caplog.records
                          if r.name == "node.association_log"), None), 10,
            what="the association log line")
    assert "association from CTSCANNER at 127.0.0.1:" in line
    assert "released: 3 instance(s) stored, 0 refused, 1 series" in line
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "DOE" not in text and "PID-31337" not in text


class _Peer:
    ae_title, address, port = "CTSCANNER", "127.0.0.1", 40000


class _Assoc:
    """What AssociationLog reads of a pynetdicom Association (the flags its thread sets)."""

    def __init__(self) -> None:
        self.requestor = _Peer()
        self.is_released = self.is_rejected = self.is_aborted = False


class _Event:
    def __init__(self, assoc) -> None:
        self.assoc = assoc


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "node.association_log"]


def test_a_release_marked_after_the_connection_closed_is_logged_released(caplog, monkeypatch):
    """The race seen in CI: the peer closes the socket on the A-RELEASE-RP before the
    association's thread marks it released; the line must still say "released", once, and
    the close must not wait for it (it runs on a pynetdicom thread)."""
    from node import association_log
    from node.association_log import AssociationLog

    monkeypatch.setattr(association_log, "OUTCOME_WAIT_S", 30.0)
    log, assoc = AssociationLog(), _Assoc()
    log.stored(assoc, "1.2.3", ok=True)
    with caplog.at_level(logging.INFO, logger="node.association_log"):
        log.on_close(_Event(assoc))            # returns at once, nothing written yet
        assert _lines(caplog) == []
        assoc.is_released = True
        log.on_end(_Event(assoc))
    assert _lines(caplog) == ["association from CTSCANNER at 127.0.0.1:40000 released: 1 "
                              "instance(s) stored, 0 refused, 1 series"]
    assert not log._counts and not len(log._pending) and not len(log._ended)


def test_the_usual_order_and_a_dropped_connection(caplog, monkeypatch):
    from node import association_log
    from node.association_log import AssociationLog
    monkeypatch.setattr(association_log, "OUTCOME_WAIT_S", 0.05)
    log = AssociationLog()
    with caplog.at_level(logging.INFO, logger="node.association_log"):
        released = _Assoc()                     # released, then the connection closes
        released.is_released = True
        log.on_end(_Event(released))
        assert _lines(caplog) == []
        log.on_close(_Event(released))
        assert len(_lines(caplog)) == 1 and " released: " in _lines(caplog)[0]
        dropped = _Assoc()                      # closed with neither: "closed", a moment later
        log.on_close(_Event(dropped))
        wait_until(lambda: len(_lines(caplog)) == 2, 5, what="the closed line")
        assert " closed: " in _lines(caplog)[1]
    assert not len(log._pending) and not len(log._ended)


def test_lines_still_waiting_are_written_when_the_receiver_stops(caplog, monkeypatch):
    from node import association_log
    from node.association_log import AssociationLog

    monkeypatch.setattr(association_log, "OUTCOME_WAIT_S", 30.0)
    log, assoc = AssociationLog(), _Assoc()
    with caplog.at_level(logging.INFO, logger="node.association_log"):
        log.on_close(_Event(assoc))
        log.flush()
    assert len(_lines(caplog)) == 1 and " closed: " in _lines(caplog)[0]
