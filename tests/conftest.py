"""Shared fixtures for real peers (see tests/peers.py for the API).

Fixtures:
    orthanc         a fresh OrthancServer per test (starts in well under a second)
    storescp        a fresh dcmtk StorescpServer per test, writing under tmp_path
    ct64_dicom_dir  the 79-slice chest CT (skips the test if the shared data is missing)
    shared_data     the shared test data folder (skips the test if it is missing)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peers import CT64_DICOM_DIR, OrthancServer, StorescpServer, shared_data_dir


@pytest.fixture
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    # exit_grace_s=0: its storage is thrown away, so skip Orthanc's ~3 s clean shutdown
    with OrthancServer(tmp_path_factory.mktemp("orthanc"), exit_grace_s=0) as server:
        yield server


@pytest.fixture
def storescp(tmp_path: Path):
    with StorescpServer(tmp_path / "storescp-received") as server:
        yield server


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set LUNGNODE_TEST_DATA)")
    return path


@pytest.fixture
def ct64_dicom_dir() -> Path:
    if not CT64_DICOM_DIR.is_dir():
        pytest.skip(
            f"test CT series not found at {CT64_DICOM_DIR} "
            "(shared data missing; set LUNGNODE_TEST_DATA to the shared/data folder)"
        )
    return CT64_DICOM_DIR
