"""Each destination gets only the outputs it lists (``destinations[].outputs``): validated at
start-up with errors naming the key, and honoured by the delivery enqueue step (a real
in-process node delivering to two dcmtk storescp destinations)."""

from __future__ import annotations

import pydicom
import pytest

from node.app import Node
from node.config import OUTPUT_KINDS, ConfigError, Destination, load_settings
from node.delivery_plan import files_for, kind_of
from node_testkit import FakeVolumeError, RecordingAnalysis, make_series, make_settings
from peers import StorescpServer, storescu, wait_until


def _config(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings(path)


def test_default_is_every_output(tmp_path) -> None:
    settings = _config(tmp_path, "destinations:\n  - {ae_title: PACS, host: 127.0.0.1, port: 104}\n")
    assert settings.destinations[0].outputs == OUTPUT_KINDS == (
        "seg", "sr", "pdf", "summary", "overlay")
    assert settings.outputs.enabled() == OUTPUT_KINDS


def test_unknown_output_is_refused_naming_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.0\.outputs\.1"):
        _config(tmp_path, "destinations:\n  - {ae_title: PACS, host: h, port: 104, "
                          "outputs: [seg, segmentation]}\n")


def test_empty_or_repeated_outputs_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.0\.outputs: .*at least one"):
        _config(tmp_path, "destinations:\n  - {ae_title: PACS, host: h, port: 104, outputs: []}\n")
    with pytest.raises(ConfigError, match=r"destinations\.0\.outputs: .*twice"):
        _config(tmp_path, "destinations:\n  - {ae_title: PACS, host: h, port: 104, "
                          "outputs: [sr, sr]}\n")


def test_an_output_the_node_does_not_write_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.1\.outputs lists pdf.*outputs\.pdf"):
        _config(tmp_path, "outputs: {pdf: false}\n"
                          "destinations:\n  - {ae_title: A, host: h, port: 104, outputs: [seg]}\n"
                          "  - {ae_title: B, host: h, port: 104, outputs: [sr, pdf]}\n")
    # without an explicit list, a destination gets what the node writes
    settings = _config(tmp_path, "outputs: {overlay: false}\n"
                                 "destinations:\n  - {ae_title: A, host: h, port: 104}\n")
    dest = settings.destinations[0]
    assert files_for(dest, [tmp_path / "overlay_0001.dcm"], {"overlay_0001.dcm": "overlay"})


def test_series_numbers_must_differ(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"outputs\.pdf_series_number is 9901"):
        _config(tmp_path, "outputs: {pdf_series_number: 9901}\n")


def test_kind_of_every_file_analyze_writes(tmp_path) -> None:
    names = ["seg.dcm", "seg_lungs.dcm", "seg_lobes.dcm", "sr.dcm", "report.dcm", "summary.dcm",
             "overlay_0001.dcm", "overlay_0133.dcm", "measurements.json", "report.pdf"]
    kinds = {n: kind_of(n) for n in names}
    assert kinds == {"seg.dcm": "seg", "seg_lungs.dcm": "seg", "seg_lobes.dcm": "seg",
                     "sr.dcm": "sr", "report.dcm": "pdf", "summary.dcm": "summary",
                     "overlay_0001.dcm": "overlay", "overlay_0133.dcm": "overlay",
                     "measurements.json": None, "report.pdf": None}
    files = [tmp_path / n for n in names]
    viewer = Destination(ae_title="VIEW", host="h", port=1, outputs=("seg", "sr"))
    assert [f.name for f in files_for(viewer, files, kinds)] == [
        "seg.dcm", "seg_lungs.dcm", "seg_lobes.dcm", "sr.dcm"]
    pacs = Destination(ae_title="PACS", host="h", port=1, outputs=("pdf", "overlay"))
    assert [f.name for f in files_for(pacs, files, kinds)] == [
        "report.dcm", "overlay_0001.dcm", "overlay_0133.dcm"]


def test_each_destination_gets_only_its_outputs(tmp_path) -> None:
    """The node's analysis output (a summary capture) goes to the destination that lists
    `summary` and not to the one that lists only `seg` and `sr`."""
    with StorescpServer(tmp_path / "wants_summary", aet="SUMMARY") as wants, \
            StorescpServer(tmp_path / "wants_seg", aet="SEGONLY") as other:
        settings = make_settings(tmp_path / "node", destinations=[
            {"ae_title": "SUMMARY", "host": "127.0.0.1", "port": wants.port,
             "outputs": ["summary", "pdf"]},
            {"ae_title": "SEGONLY", "host": "127.0.0.1", "port": other.port,
             "outputs": ["seg", "sr"]},
        ])
        node = Node(settings, analyze=RecordingAnalysis(), bad_input_errors=(FakeVolumeError,))
        node.start()
        try:
            files = make_series(tmp_path / "ct", 4)
            assert storescu(files, node.port).returncode == 0
            received = wants.wait_for_files(1, timeout_s=60)
            assert pydicom.dcmread(received[0]).Modality == "OT"
            rows = wait_until(lambda: (r := node.store.deliveries()) and all(
                d.state == "done" for d in r) and r, 30, what="deliveries done")
            assert {d.destination for d in rows} == {str(settings.destinations[0])}
            assert other.files() == []
        finally:
            node.stop()


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path) -> None:
    """Plain YAML keeps the last of two equal keys silently; an edited config must not run
    on a value nobody meant (found writing config.yaml itself)."""
    with pytest.raises(ConfigError, match=r"key 'engine' appears twice \(first on line 2\)"):
        _config(tmp_path, "analysis:\n  engine: unet\n  hilar_filter: true\n  engine: threshold\n")
    with pytest.raises(ConfigError, match=r"key 'node' appears twice"):
        _config(tmp_path, "node: {ae_title: A}\nnode: {ae_title: B}\n")


def test_the_shipped_config_has_no_key_twice() -> None:
    from node.config import DEFAULT_CONFIG_PATH

    settings = load_settings(None)   # would raise on a repeated key
    assert DEFAULT_CONFIG_PATH.is_file() and settings.analysis.hilar_vessel_trees is False
