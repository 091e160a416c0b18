"""DICOM TLS (PS3.15 Annex B.1, secure transport connection profile): ``ssl.SSLContext``s
from the ``tls:`` settings, TLS 1.2 or later only.

* ``server_context(network.tls)``: the receiver's context (its certificate and key; with
  ``require_client_certificate`` a client must present a certificate signed by
  ``ca_certificates``, otherwise the handshake fails and nothing is received).
* ``client_args(destination)``: ``(context, server_hostname)`` for pynetdicom's
  ``AE.associate(tls_args=...)``, or None for a plain TCP destination. The destination's
  certificate is verified against ``ca_certificates`` and its name against
  ``server_hostname`` (default: the destination's host).
"""

from __future__ import annotations

import ssl

from node.config import Destination, DestinationTlsSettings, ReceiverTlsSettings


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(settings: ReceiverTlsSettings) -> ssl.SSLContext:
    context = _base(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.certificate), str(settings.key))
    if settings.ca_certificates is not None:
        context.load_verify_locations(cafile=str(settings.ca_certificates))
    context.verify_mode = (
        ssl.CERT_REQUIRED if settings.require_client_certificate
        else ssl.CERT_OPTIONAL if settings.ca_certificates is not None
        else ssl.CERT_NONE
    )
    return context


def client_context(settings: DestinationTlsSettings) -> ssl.SSLContext:
    context = _base(ssl.Purpose.SERVER_AUTH)
    context.load_verify_locations(cafile=str(settings.ca_certificates))
    if settings.certificate is not None:
        context.load_cert_chain(str(settings.certificate), str(settings.key))
    return context


def client_args(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """``tls_args`` for ``AE.associate`` to ``destination`` (None: plain TCP)."""
    if destination.tls is None:
        return None
    hostname = destination.tls.server_hostname or destination.host
    return client_context(destination.tls), hostname
