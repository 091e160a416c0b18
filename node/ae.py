"""The one place where an application entity gets its title, timeouts and PDU size."""

from __future__ import annotations

from pynetdicom import AE

from node.config import NetworkSettings


def configured_ae(net: NetworkSettings) -> AE:
    """An AE with ``network.ae_title``, the ACSE/DIMSE/network timeouts and the max PDU."""
    ae = AE(ae_title=net.ae_title)
    ae.acse_timeout = net.acse_timeout_s
    ae.dimse_timeout = net.dimse_timeout_s
    ae.network_timeout = net.network_timeout_s
    ae.maximum_pdu_size = net.max_pdu_bytes
    return ae
