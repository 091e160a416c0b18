"""The one place where lungnode hooks into pynetdicom below its public API (3.0.4 exactly).

With ``_config.STORE_RECV_CHUNKED_DATASET`` (public) pynetdicom streams each received
dataset into ``tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` in the
system temp directory. The receiver needs that file in its own incoming/ directory (same
filesystem as the spool: the handler then only fsyncs and renames) and needs to stop
writing when an instance goes over ``storage.max_instance_mb``. pynetdicom has no hook for
either, so this module replaces the name ``NamedTemporaryFile`` in
``pynetdicom.dimse_messages`` with a factory that asks the listening port's registered
opener (``register``) for the file.

Second hook, ``end_acceptor_wait``: an acceptor's association thread waits up to the ACSE
timeout on ``dul.to_user_queue`` for the A-ASSOCIATE-RQ, even when the connection has
already been closed (by node.pdu_guard: a half-sent request timed out); it keeps its
``maximum_associations`` slot meanwhile. Putting ``None`` in that queue (what the wait
returns on a timeout) ends the thread at once.

Pinned: ``install()`` refuses any pynetdicom other than ``PYNETDICOM_VERSION`` and
tests/test_pynetdicom_adapter.py checks the version and the source hash of the one hooked
functions (``HOOKED_SOURCES``), so an upgrade fails a test instead of silently writing
received data elsewhere. Everything else the receiver does with pynetdicom is public API
(``AE.make_server``, events, ``socketserver`` methods).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import tempfile
import threading
from typing import Callable

import pynetdicom
from pynetdicom import _config, dimse_messages

PYNETDICOM_VERSION = "3.0.4"
#: sha256 of ``inspect.getsource`` of the functions whose behaviour the hooks rely on:
#: ``DIMSEMessage.decode_msg`` calls ``NamedTemporaryFile(delete=False, mode="wb",
#: suffix=".dcm")``, then ``.name``, ``.write()`` and ``.file.flush()`` (the C-STORE SCP
#: closes it); ``Association.run_reactor`` (acceptor) waits on ``dul.receive_pdu(wait=True,
#: timeout=acse_timeout)`` and ends on None; ``receive_pdu`` reads ``to_user_queue``.
HOOKED_SOURCES = {
    "pynetdicom.dimse_messages:DIMSEMessage.decode_msg":
        "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
    "pynetdicom.association:Association.run_reactor":
        "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d",
    "pynetdicom.dul:DULServiceProvider.receive_pdu":
        "fa67339834ca998cb31eb1806a854864200464b0a9991333d387aa419478c4e6",
}

Opener = Callable[[str], object]  # suffix -> a writable file object with .name

_openers: dict[int, Opener] = {}
_lock = threading.Lock()
_installed = False


def source_sha256(name: str) -> str:
    """sha256 of the source of ``"package.module:Class.function"``."""
    module_name, _, qualname = name.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode("utf-8")).hexdigest()


def end_acceptor_wait(assoc) -> None:
    """End an acceptor's wait for an A-ASSOCIATE-RQ that can no longer come (module doc)."""
    assoc.dul.to_user_queue.put(None)


def register(port: int, opener: Opener) -> None:
    """Received datasets of associations accepted on ``port`` go to ``opener(suffix)``."""
    install()
    with _lock:
        _openers[port] = opener


def unregister(port: int) -> None:
    with _lock:
        _openers.pop(port, None)


def install() -> None:
    """Stream received datasets to files (``STORE_RECV_CHUNKED_DATASET``) made by the
    registered openers. Process-wide, idempotent."""
    global _installed
    if _installed:
        return
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        raise RuntimeError(
            f"node._pynetdicom_adapter is pinned to pynetdicom {PYNETDICOM_VERSION}, "
            f"found {pynetdicom.__version__}: check DIMSEMessage.decode_msg and update the pin"
        )
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _temp_file
    _installed = True


def _temp_file(*, suffix: str = "", **kwargs):
    """Called on the association's DUL thread (``threading.current_thread().assoc``)."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    try:
        port = assoc.acceptor.port
    except (AttributeError, ValueError):
        port = None
    with _lock:
        opener = _openers.get(port)
    if opener is None:  # another acceptor in this process: pynetdicom's own behaviour
        return tempfile.NamedTemporaryFile(suffix=suffix, **kwargs)
    return opener(suffix)
