"""docs/CONFORMANCE.md against the code's own tables: a SOP class, transfer syntax or status
added to (or removed from) the code without updating the statement fails here."""

from __future__ import annotations

import re

from pydicom.uid import UID
from pynetdicom import AE

import node.receiver as receiver
from node import sender
from peers import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "CONFORMANCE.md").read_text(encoding="utf-8")


def section(title_start: str) -> str:
    match = re.search(rf"^## {re.escape(title_start)}.*?$(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"no section starting with {title_start!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def uid_column(title_start: str) -> dict[str, str]:
    rows = table_rows(section(title_start))
    return {r[0]: r[1] for r in rows if re.fullmatch(r"[0-9.]+", r[0])}


def test_accepted_sop_classes_match_the_receiver():
    documented = uid_column("3. Storage SCP: accepted SOP classes")
    code = set(receiver.IMAGE_SOP_CLASSES + receiver.DERIVED_SOP_CLASSES)
    assert set(documented) == code | {receiver.VERIFICATION_SOP_CLASS}
    for uid, name in documented.items():
        assert UID(uid).name == name, uid
    uses = {r[0]: r[2] for r in table_rows(section("3. Storage SCP"))}
    assert {u for u, use in uses.items() if use == "analysed"} == set(receiver.IMAGE_SOP_CLASSES)


def test_accepted_transfer_syntaxes_match_the_receiver():
    documented = uid_column("4. Storage SCP: accepted transfer syntaxes")
    assert set(documented) == set(receiver.TRANSFER_SYNTAXES)
    ae = receiver.make_ae(receiver.Settings())
    for cx in ae.supported_contexts:
        if cx.abstract_syntax != receiver.VERIFICATION_SOP_CLASS:
            assert set(cx.transfer_syntax) == set(documented), cx.abstract_syntax


def test_statuses_match_the_receiver_constants():
    rows = table_rows(section("5. Storage SCP: C-STORE response statuses"))
    documented = {r[1]: int(r[0], 16) for r in rows}
    code = {name: value for name, value in vars(receiver).items() if name.startswith("STATUS_")}
    assert documented == code


def test_sent_sop_classes_and_syntaxes():
    from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

    import node.outputs.seg as seg
    import node.outputs.sr as sr

    documented = uid_column("6. Storage SCU: sent SOP classes")
    assert set(documented) == {SegmentationStorage, Comprehensive3DSRStorage}
    # the output writers use exactly these classes
    assert "hd.seg.Segmentation(" in open(seg.__file__).read()
    assert "hd.sr.Comprehensive3DSR(" in open(sr.__file__).read()
    rows = table_rows(section("7. Storage SCU: proposed"))
    syntaxes = [r[0] for r in rows if r[0] in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")]
    assert tuple(syntaxes) == tuple(sender._FALLBACK_SYNTAXES)


def test_implementation_identification_and_timeouts():
    ae = AE()
    ident = section("2. Implementation identification")
    assert ae.implementation_class_uid in ident
    assert ae.implementation_version_name in ident
    behaviour = section("8. AE behaviour")
    for key in ("network.max_associations", "network.max_pdu_bytes", "network.pdu_timeout_s",
                "network.acse_timeout_s", "network.dimse_timeout_s",
                "network.network_timeout_s", "storage.max_instance_mb"):
        assert key in behaviour, key
    settings = receiver.Settings()
    assert f"default {settings.network.max_associations})" in behaviour
    assert f"default {settings.network.max_pdu_bytes};" in behaviour
    assert f"default {settings.network.pdu_timeout_s:g} s" in behaviour
    assert f"default {settings.storage.max_instance_mb})" in behaviour
    from node import pdu_guard

    assert pdu_guard.MAX_ASSOCIATE_RQ_BYTES == 1024 * 1024 and "A-ASSOCIATE-RQ 1 MiB" in behaviour
    assert pdu_guard.MAX_OTHER_PDU_BYTES == 64 * 1024 and "other PDUs 64 KiB" in behaviour
    security = section("9. Security")
    for key in ("network.tls", "destinations[].tls", "require_client_certificate",
                "network.allowed_calling_ae_titles"):
        assert key in security, key
