"""The one place where lungnode hooks into pynetdicom below its public API (3.0.4 exactly).

With ``_config.STORE_RECV_CHUNKED_DATASET`` (public) pynetdicom streams each received
dataset into ``tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` in the
system temp directory. The receiver needs that file in its own incoming/ directory (same
filesystem as the spool: the handler then only fsyncs and renames) and needs to stop
writing when an instance goes over ``storage.max_instance_mb``. pynetdicom has no hook for
either, so this module replaces the name ``NamedTemporaryFile`` in
``pynetdicom.dimse_messages`` with a factory that asks the listening port's registered
opener (``register``) for the file.

Pinned: ``install()`` refuses any pynetdicom other than ``PYNETDICOM_VERSION`` and
tests/test_pynetdicom_adapter.py checks the version and the source hash of the one hooked
function (``HOOKED_SOURCE_SHA256``), so an upgrade fails a test instead of silently writing
received data elsewhere. Everything else the receiver does with pynetdicom is public API
(``AE.make_server``, events, ``socketserver`` methods).
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
import threading
from typing import Callable

import pynetdicom
from pynetdicom import _config, dimse_messages

PYNETDICOM_VERSION = "3.0.4"
#: sha256 of ``inspect.getsource(DIMSEMessage.decode_msg)``, the only caller of the name
#: replaced (it calls ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``, then
#: ``.name``, ``.write()`` and ``.file.flush()``; the handler closes it).
HOOKED_SOURCE_SHA256 = "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284"

Opener = Callable[[str], object]  # suffix -> a writable file object with .name

_openers: dict[int, Opener] = {}
_lock = threading.Lock()
_installed = False


def hooked_source_sha256() -> str:
    source = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


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
