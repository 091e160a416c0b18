"""DICOM TLS with real dcmtk peers and certificates made by the test (openssl CLI):
dcmtk ``storescu +tls`` against the node's receiver, and the node's sender against dcmtk
``storescp +tls``; a client without a (trusted) certificate is refused when required."""

from __future__ import annotations

import subprocess

import pytest

from node.config import ConfigError, Destination, load_settings
from node.receiver import Receiver, StoreContext
from node.sender import echo, send_files
from node.spool import Spool
from node.store import StateStore
from node_testkit import make_series, make_settings
from peers import StorescpServer, _dcmtk_env, _port_accepts, free_port, storescu, wait_until
from tls_certs import make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_receiver(tmp_path, certs):
    root = tmp_path / "root"
    settings = make_settings(root, network={"tls": {
        "certificate": str(certs.server_cert), "key": str(certs.server_key),
        "ca_certificates": str(certs.ca), "require_client_certificate": True}})
    rx = Receiver(settings, StoreContext(Spool(root, 0), StateStore(root / "db.sqlite3")))
    rx.start()
    yield rx
    rx.stop()


def _tls_args(certs, cert=None, key=None):
    args = ["+tls", str(key or certs.client_key), str(cert or certs.client_cert)]
    return [*args, "+cf", str(certs.ca)]


def test_storescu_tls_with_client_certificate_stores(tls_receiver, certs, tmp_path):
    files = make_series(tmp_path / "s", 3)
    result = storescu(files, tls_receiver.port, extra_args=_tls_args(certs))
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(tls_receiver.ctx.store.known_instance_paths()) == 3


def test_clients_without_trusted_certificate_refused(tls_receiver, certs, tmp_path):
    files = make_series(tmp_path / "s", 1)
    no_cert = storescu(files, tls_receiver.port, extra_args=["+tla", "+cf", str(certs.ca)])
    rogue = storescu(files, tls_receiver.port,
                     extra_args=_tls_args(certs, certs.rogue_cert, certs.rogue_key))
    plain = storescu(files, tls_receiver.port)
    assert no_cert.returncode != 0 and rogue.returncode != 0 and plain.returncode != 0
    assert not tls_receiver.ctx.store.known_instance_paths()
    ok = storescu(files, tls_receiver.port, extra_args=_tls_args(certs))  # still serving
    assert ok.returncode == 0, ok.stderr


class _TlsStorescp(StorescpServer):
    """dcmtk storescp +tls (requires and verifies the client's certificate)."""

    def __init__(self, output_dir, certs):
        super().__init__(output_dir)
        self.certs = certs

    def start(self):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            ["storescp", "-v", "-aet", self.aet, "-od", str(self.output_dir), "+xa", "-pm",
             "+tls", str(self.certs.server_key), str(self.certs.server_cert),
             "+cf", str(self.certs.ca), str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_dcmtk_env(), start_new_session=True)
        wait_until(lambda: _port_accepts(self.port), 30, what="storescp +tls")
        return self


def test_sender_to_storescp_tls(certs, tmp_path):
    files = make_series(tmp_path / "s", 3)
    settings = make_settings(tmp_path / "root")
    with _TlsStorescp(tmp_path / "received", certs) as scp:
        dest = Destination(ae_title=scp.aet, host="127.0.0.1", port=scp.port, tls={
            "ca_certificates": str(certs.ca), "certificate": str(certs.client_cert),
            "key": str(certs.client_key)})
        report = send_files(files, dest, settings)
        assert report.ok, report.errors
        assert set(report.statuses.values()) == {0}
        scp.wait_for_files(3, 30)
        assert echo(dest, settings) == 0
        # the same destination without TLS: storescp speaks TLS only
        plain = Destination(ae_title=scp.aet, host="127.0.0.1", port=scp.port)
        assert not send_files(files[:1], plain, settings).ok
        # a destination whose certificate does not chain to the configured CA
        wrong_ca = Destination(ae_title=scp.aet, host="127.0.0.1", port=scp.port, tls={
            "ca_certificates": str(certs.rogue_cert)})
        assert not send_files(files[:1], wrong_ca, settings).ok


def test_tls_config_paths_resolve_and_missing_file_names_the_key(certs, tmp_path):
    cfg = tmp_path / "config.yaml"
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.pem").write_bytes(certs.server_cert.read_bytes())
    (tmp_path / "tls" / "server.key").write_bytes(certs.server_key.read_bytes())
    cfg.write_text("network:\n  tls:\n    certificate: tls/server.pem\n    key: tls/server.key\n")
    settings = load_settings(cfg)
    assert settings.network.tls.certificate == tmp_path / "tls" / "server.pem"
    cfg.write_text("network:\n  tls:\n    certificate: tls/server.pem\n    key: tls/nope.key\n")
    with pytest.raises(ConfigError, match=r"network\.tls\.key: file not found"):
        load_settings(cfg)
    cfg.write_text("network:\n  tls:\n    certificate: tls/server.pem\n    key: tls/server.key\n"
                   "    require_client_certificate: true\n")
    with pytest.raises(ConfigError, match="ca_certificates"):
        load_settings(cfg)


def test_stalled_handshake_does_not_block_other_clients(tls_receiver, certs, tmp_path):
    import socket

    files = make_series(tmp_path / "s", 1)
    with socket.create_connection(("127.0.0.1", tls_receiver.port)) as stalled:
        stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        result = storescu(files, tls_receiver.port, extra_args=_tls_args(certs))
        assert result.returncode == 0, result.stderr
