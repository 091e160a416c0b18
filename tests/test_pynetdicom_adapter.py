"""node._pynetdicom_adapter is pinned to one pynetdicom release: this test fails when
pynetdicom changes (version, or the source of the function whose temp-file call it
replaces), so an upgrade is a conscious decision, not a silent change of where received
data is written."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pynetdicom

from node import _pynetdicom_adapter as adapter


def test_pinned_version_and_hooked_sources():
    assert pynetdicom.__version__ == adapter.PYNETDICOM_VERSION
    for name, digest in adapter.HOOKED_SOURCES.items():
        assert adapter.source_sha256(name) == digest, f"{name} changed upstream"


def test_hooked_call_is_the_one_the_adapter_expects():
    import inspect

    source = inspect.getsource(pynetdicom.dimse_messages.DIMSEMessage.decode_msg)
    assert 'NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")' in source
    wait = inspect.getsource(pynetdicom.association.Association.run_reactor)
    assert "self.dul.receive_pdu(wait=True, timeout=self.acse_timeout)" in wait
    assert "if primitive is None:" in wait
    adapter.install()
    assert pynetdicom.dimse_messages.NamedTemporaryFile is adapter._temp_file
    assert pynetdicom._config.STORE_RECV_CHUNKED_DATASET is True


def test_factory_routes_by_listening_port(tmp_path):
    made = []

    def opener(suffix):
        f = open(tmp_path / f"x{suffix}", "wb")
        made.append(f)
        return f

    adapter.register(54321, opener)
    result = {}

    def dul_thread():  # stands for pynetdicom's DUL thread of an acceptor on port 54321
        threading.current_thread().assoc = SimpleNamespace(
            acceptor=SimpleNamespace(port=54321))
        result["file"] = adapter._temp_file(delete=False, mode="wb", suffix=".dcm")

    t = threading.Thread(target=dul_thread)
    t.start()
    t.join()
    adapter.unregister(54321)
    assert result["file"] is made[0]
    result["file"].close()
    other = adapter._temp_file(delete=False, mode="wb", suffix=".dcm")  # no acceptor: stock
    other.close()
    assert not other.name.startswith(str(tmp_path))
