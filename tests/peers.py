"""Real DICOM peers for tests: Orthanc, dcmtk's storescu/storescp/echoscu.

Every peer runs as a separate process on 127.0.0.1 with ports chosen at run time; nothing
uses a fixed port and nothing sleeps to wait (poll with :func:`wait_until`). The binaries
come from Debian's packages (orthanc, dcmtk, dicom3tools), which ``scripts/install.sh``
installs; a missing binary fails the test with that hint rather than skipping it.

Import from tests as ``from peers import ...`` (``tests/`` is on ``sys.path`` because
``tests/conftest.py`` lives there and ``tests/`` has no ``__init__.py``).

API
---
``free_port() -> int``
    A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, close).

``wait_until(predicate, timeout_s, interval_s=0.05, what="...")``
    Call ``predicate()`` until it returns a truthy value and return that value; raise
    ``TimeoutError`` naming ``what`` after ``timeout_s``.

``OrthancServer(workdir, aet="ORTHANC", exit_grace_s=20)`` (context manager; fixture ``orthanc``)
    A throw-away Orthanc with its storage, index, config and log under ``workdir``.
    Leaving the ``with`` block stops it (SIGTERM, ``exit_grace_s``, SIGKILL); the
    fixture uses ``exit_grace_s=0`` because its storage is discarded anyway.
    ``.aet``, ``.dicom_port``, ``.http_port``, ``.http_url``, ``.log_path``,
    ``.get(path)`` (JSON), ``.get_bytes(path)``, ``.post(path, body)``, ``.put(path, body)``,
    ``.add_modality(name, aet, port)``, ``.send_to_modality(name, orthanc_ids)`` (C-STORE
    from Orthanc to a peer such as the node under test),
    ``.instances()`` (Orthanc IDs), ``.studies()`` (Orthanc IDs),
    ``.series_of_study(study_uid)`` (Orthanc series objects of the study with that
    StudyInstanceUID), ``.find_series(study_uid)`` (list of :class:`SeriesSummary`),
    ``.instance_file(orthanc_id) -> bytes`` (the stored DICOM file), ``.stop(grace_s=20)``.

``storescu(files_or_dir, port, aet="SCANNER", aec="LUNGNODE", extra_args=(), timeout_s=300)``
    Run dcmtk ``storescu`` against 127.0.0.1:port (directories are scanned recursively);
    returns the ``CompletedProcess`` (text, stdout/stderr captured, not checked).
``echoscu(port, aec, aet="ECHOSCU", timeout_s=60)``
    Run dcmtk ``echoscu`` (C-ECHO); returns the ``CompletedProcess``.

``StorescpServer(output_dir, aet="STORESCP")`` (context manager; fixture ``storescp``)
    dcmtk ``storescp`` (single process) on a free port, writing what it receives to
    ``output_dir``. ``.port``, ``.aet``, ``.output_dir``, ``.files()``, ``.log_path``,
    ``.wait_for_files(count, timeout_s)``, ``.stop()``.

``shared_data_dir() -> Path`` and ``CT64_DICOM_DIR``
    The shared test data (``<repo>/../shared/data``; override with the environment
    variable ``LUNGNODE_TEST_DATA``). Fixture ``ct64_dicom_dir`` skips the test with a
    clear message when the data is missing.

``dciodvfy_errors(path) -> list[str]`` lives in ``tests/dicom_validation.py``; it is
re-exported here when that module exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")

INSTALL_HINT = "run ./scripts/install.sh (installs dcmtk, orthanc and dicom3tools)"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 when this returned."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises ``TimeoutError("timed out after ...s waiting for <what>")``. Exceptions raised
    by the predicate propagate (make the predicate catch what it expects).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def require_binary(name: str, fallback: str | None = None) -> str:
    """Absolute path of an executable; raise ``FileNotFoundError`` with the install hint."""
    found = shutil.which(name)
    if found:
        return found
    if fallback and os.access(fallback, os.X_OK):
        return fallback
    raise FileNotFoundError(f"{name} not found on PATH: {INSTALL_HINT}")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL: only this process, by its pid."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _dcmtk_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


# --------------------------------------------------------------------------- test data


def shared_data_dir() -> Path:
    """``$LUNGNODE_TEST_DATA`` or ``<repo>/../shared/data`` (may not exist)."""
    override = os.environ.get("LUNGNODE_TEST_DATA")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "data"


CT64_DICOM_DIR = shared_data_dir() / "chest_imaging_platform_ct64" / "ct-64Dicom"
CT64_INSTANCE_COUNT = 79


# --------------------------------------------------------------------------- dcmtk


def storescu(
    files_or_dir: Path | str | Iterable[Path | str],
    port: int,
    aet: str = "SCANNER",
    aec: str = "LUNGNODE",
    extra_args: Sequence[str] = (),
    timeout_s: float = 300,
) -> subprocess.CompletedProcess:
    """Send files (directories scanned recursively) with dcmtk storescu to 127.0.0.1:port.

    The result is not checked: assert on ``.returncode`` (0 = association released and
    every C-STORE succeeded) and read ``.stdout``/``.stderr`` for the detail.
    """
    if isinstance(files_or_dir, (str, Path)):
        paths = [str(files_or_dir)]
    else:
        paths = [str(p) for p in files_or_dir]
    cmd = [
        require_binary("storescu"),
        "-aet", aet, "-aec", aec,
        "-to", "30", "-ta", "30", "-td", "120",
        "+sd", "+r",
        *extra_args,
        "127.0.0.1", str(port),
        *paths,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=_dcmtk_env(),
        stdin=subprocess.DEVNULL,
    )


def echoscu(
    port: int, aec: str, aet: str = "ECHOSCU", timeout_s: float = 60
) -> subprocess.CompletedProcess:
    """C-ECHO 127.0.0.1:port with dcmtk echoscu; returncode 0 means success."""
    cmd = [
        require_binary("echoscu"),
        "-aet", aet, "-aec", aec, "-to", "10", "-ta", "10", "-td", "10",
        "127.0.0.1", str(port),
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=_dcmtk_env(),
        stdin=subprocess.DEVNULL,
    )


class StorescpServer:
    """dcmtk storescp on 127.0.0.1:<free port>, storing into ``output_dir``.

    storescp has no bind-address option: it listens on all interfaces, on a random port,
    for the duration of a test. Accepts every transfer syntax it supports (``+xa``) and
    unknown SOP classes (``-pm``).
    """

    def __init__(self, output_dir: Path, aet: str = "STORESCP", start_timeout_s: float = 30):
        self.output_dir = Path(output_dir)
        self.aet = aet
        self.port = 0
        self.log_path = self.output_dir.parent / f"storescp-{self.output_dir.name}.log"
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "StorescpServer":
        self.output_dir.mkdir(parents=True, exist_ok=True)
        binary = require_binary("storescp")
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self._log = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [
                    binary, "-v", "-aet", self.aet, "-od", str(self.output_dir),
                    "+xa", "-pm", "-dhl", "-ta", "30", "-td", "120",
                    str(self.port),
                ],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_dcmtk_env(), start_new_session=True,
            )
            try:
                wait_until(
                    lambda: self._proc.poll() is not None or _port_accepts(self.port),
                    self.start_timeout_s, what=f"storescp on port {self.port}",
                )
            except TimeoutError:
                self.stop()
                raise RuntimeError(
                    f"storescp did not start; log {self.log_path}:\n{_log_tail(self.log_path)}"
                ) from None
            if self._proc.poll() is None:
                return self
            self._close_log()
            if attempt == 2:
                break
        raise RuntimeError(
            f"storescp exited at start; log {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def files(self) -> list[Path]:
        """Files received so far, sorted by name."""
        return sorted(p for p in self.output_dir.rglob("*") if p.is_file())

    def wait_for_files(self, count: int, timeout_s: float = 60) -> list[Path]:
        """Wait until at least ``count`` files have arrived; return them."""
        return wait_until(
            lambda: (files := self.files()) and len(files) >= count and files,
            timeout_s, what=f"{count} files in {self.output_dir}",
        )

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "StorescpServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- Orthanc


@dataclass(frozen=True)
class SeriesSummary:
    """One series as Orthanc holds it (values from the first instance's tags)."""

    orthanc_id: str
    series_instance_uid: str
    modality: str
    sop_class_uid: str
    series_number: int | None
    series_description: str
    instance_count: int


class OrthancServer:
    """A throw-away Orthanc (``/usr/sbin/Orthanc``) configured for tests.

    Called AE title checked (``aet``), every calling AE may C-ECHO and C-STORE, no
    plugins unless ``plugins`` names them (e.g. the DICOMweb plugin, with its settings in
    ``extra_config``), no Orthanc Explorer/WebDAV, REST API without authentication answering
    only local clients (``RemoteAccessAllowed: false``).

    Orthanc 1.10 has no option to choose the address it listens on: both the DICOM and
    the HTTP server bind to all interfaces. The ports are random and live only for the
    test; the HTTP server refuses non-local clients.
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        start_timeout_s: float = 60,
        exit_grace_s: float = 20,
        plugins: Sequence[str] = (),
        extra_config: dict[str, Any] | None = None,
    ):
        self.workdir = Path(workdir)
        self.plugins = list(plugins)
        self.extra_config = dict(extra_config or {})
        self.exit_grace_s = exit_grace_s
        self.aet = aet
        self.dicom_port = 0
        self.http_port = 0
        self.start_timeout_s = start_timeout_s
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        return {
            "Name": f"lungnode-test-{self.dicom_port}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": self.plugins,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "UnknownSopClassAccepted": True,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "MetricsEnabled": False,
            "HttpThreadsCount": 4,
            "DicomThreadsCount": 2,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "SyncStorageArea": False,
            "StableAge": 1,
            "LuaScripts": [],
            **self.extra_config,
        }

    def start(self) -> "OrthancServer":
        binary = require_binary("Orthanc", fallback="/usr/sbin/Orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.dicom_port, self.http_port = free_port(), free_port()
            while self.http_port == self.dicom_port:
                self.http_port = free_port()
            self.config_path.write_text(json.dumps(self._config(), indent=2), encoding="utf-8")
            self._log = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [binary, str(self.config_path)],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )
            try:
                wait_until(
                    lambda: self._proc.poll() is not None or self._answers(),
                    self.start_timeout_s, what=f"Orthanc REST API at {self.http_url}/system",
                )
            except TimeoutError:
                self.stop()
                raise RuntimeError(
                    f"Orthanc did not answer {self.http_url}/system within "
                    f"{self.start_timeout_s:g}s; log {self.log_path}:\n{_log_tail(self.log_path)}"
                ) from None
            if self._proc.poll() is None:
                wait_until(lambda: _port_accepts(self.dicom_port), self.start_timeout_s,
                           what=f"Orthanc DICOM port {self.dicom_port}")
                return self
            self._close_log()
            if attempt == 2:
                break
        raise RuntimeError(
            f"Orthanc exited at start (rc={self._proc.returncode}); "
            f"log {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def _answers(self) -> bool:
        try:
            return bool(self.get("/system"))
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, grace_s: float = 20) -> None:
        """Terminate Orthanc, wait up to ``grace_s`` for a clean exit (it takes ~2-3 s to
        close its servers), then kill it. ``grace_s=0`` for a throw-away instance."""
        if self._proc is not None:
            _stop_process(self._proc, grace_s=grace_s)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace_s=self.exit_grace_s)

    # -- REST

    def get_bytes(self, path: str, timeout_s: float = 30) -> bytes:
        with self._opener.open(self.http_url + path, timeout=timeout_s) as response:
            return response.read()

    def get(self, path: str, timeout_s: float = 30) -> Any:
        return json.loads(self.get_bytes(path, timeout_s))

    def post(self, path: str, body: Any, timeout_s: float = 30) -> Any:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        if isinstance(data, str):
            data = data.encode("utf-8")
        request = urllib.request.Request(self.http_url + path, data=data, method="POST")
        with self._opener.open(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")

    def put(self, path: str, body: Any, timeout_s: float = 30) -> Any:
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.http_url + path, data=data, method="PUT")
        with self._opener.open(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Declare a DICOM peer (e.g. the node under test) that Orthanc may send to."""
        self.put(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def send_to_modality(self, name: str, orthanc_ids: Sequence[str]) -> Any:
        """C-STORE these resources (instances, series, studies...) to a declared peer;
        returns when the peer has answered (raises ``HTTPError`` if the store failed)."""
        return self.post(
            f"/modalities/{name}/store",
            {"Resources": list(orthanc_ids), "Synchronous": True},
            timeout_s=300,
        )

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return self.get("/instances")

    def studies(self) -> list[str]:
        """Orthanc IDs of every stored study."""
        return self.get("/studies")

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file (Part 10 bytes) of one instance."""
        return self.get_bytes(f"/instances/{orthanc_id}/file")

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Orthanc series objects (with ``MainDicomTags``) of the study with this UID."""
        found = self.post(
            "/tools/find",
            {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}, "Expand": False},
        )
        series: list[dict[str, Any]] = []
        for study_id in found:
            series.extend(self.get(f"/studies/{study_id}/series"))
        return series

    def find_series(self, study_uid: str) -> list[SeriesSummary]:
        """One :class:`SeriesSummary` per series of the study, sorted by series number."""
        summaries = []
        for series in self.series_of_study(study_uid):
            tags = series.get("MainDicomTags", {})
            instances = series.get("Instances", [])
            sop_class = ""
            if instances:
                first = self.get(f"/instances/{instances[0]}/simplified-tags")
                sop_class = first.get("SOPClassUID", "")
            number = tags.get("SeriesNumber")
            summaries.append(
                SeriesSummary(
                    orthanc_id=series["ID"],
                    series_instance_uid=tags.get("SeriesInstanceUID", ""),
                    modality=tags.get("Modality", ""),
                    sop_class_uid=sop_class,
                    series_number=int(number) if number not in (None, "") else None,
                    series_description=tags.get("SeriesDescription", ""),
                    instance_count=len(instances),
                )
            )
        return sorted(summaries, key=lambda s: (s.series_number is None, s.series_number or 0))


# --------------------------------------------------------------------------- dciodvfy

try:  # written by another module's owner; re-exported for convenience when present
    from dicom_validation import dciodvfy_errors  # type: ignore[import-not-found]  # noqa: F401
except ModuleNotFoundError as _exc:  # pragma: no cover - depends on the tree
    if _exc.name != "dicom_validation":
        raise
