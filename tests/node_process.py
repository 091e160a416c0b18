"""Run the real ``lungnode run`` in a child process, as an operator would.

``NodeProcess(workdir, destinations=[(aet, port)], quiet_period_s=2, **config)`` writes a
config file under ``workdir`` (storage under ``workdir/var``, a free port on 127.0.0.1),
starts ``python -m node.cli run --config ...`` and waits until the port accepts.
``.stop()`` sends SIGTERM; ``.kill()`` sends SIGKILL (the crash tests use it).
``env`` adds environment variables for the node (e.g. ``{"TZ": "Asia/Tokyo"}``); ``.pid``
is the node's process id (for /proc/<pid>/fd and status).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from peers import REPO_ROOT, _log_tail, _port_accepts, _stop_process, free_port, wait_until


class NodeProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        ae_title: str = "LUNGNODE",
        destinations: list[tuple[str, int]] = (),
        quiet_period_s: float = 2,
        overrides: dict | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = free_port()
        self.storage = self.workdir / "var"
        config = {
            "network": {"ae_title": ae_title, "bind_address": "127.0.0.1", "port": self.port},
            "storage": {"root": str(self.storage), "min_free_mb": 64},
            "series": {"quiet_period_s": quiet_period_s},
            "destinations": [
                {"ae_title": aet, "host": "127.0.0.1", "port": port} for aet, port in destinations
            ],
            "delivery": {"retry_initial_delay_s": 1, "retry_max_delay_s": 5},
        }
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = self.workdir / "node.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> "NodeProcess":
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "run", "--config", str(self.config_path)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        log.close()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lungnode run exited early:\n{self.log_tail()}")
            return _port_accepts(self.port)

        wait_until(ready, timeout_s, 0.1, "lungnode run to accept connections")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self, grace_s: float = 30) -> int | None:
        if self.proc is not None:
            _stop_process(self.proc, grace_s)
            return self.proc.returncode
        return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
