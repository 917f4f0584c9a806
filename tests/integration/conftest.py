"""The whole service against a real PACS: Orthanc, and `pacs-annotator up` started by its CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.processes import (
    free_port,
    log_tail,
    require_binaries,
    stop_process,
    wait_for_port,
)

ANNOTATOR_AET = "PACS_ANNOTATOR"


@dataclass
class RunningService:
    """A `pacs-annotator up` process and what a test needs to talk to it."""

    config: Path
    data_dir: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] | None = None  # the service's environment, for CLI calls beside it

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=self.env,
        )

    def jobs(self) -> list[dict[str, Any]]:
        result = self.cli("jobs", "--json", "--limit", "1000")
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(path: Path, *, data_dir: Path, port: int, orthanc: Orthanc) -> Path:
    config = {
        "data_dir": str(data_dir),
        "log_level": "INFO",
        "scp": {"ae_title": ANNOTATOR_AET, "host": "127.0.0.1", "port": port},
        "completion": {"quiet_seconds": 1.0},
        "destinations": {
            "orthanc": {
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "default": True,
            }
        },
        "delivery": {"max_retries": 2, "retry_delay_seconds": 1, "timeout_seconds": 30},
        # `up` starts the monitor too: never on the fixed default port, tests run side by side.
        "monitor": {"port": free_port()},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def orthanc() -> Iterator[Orthanc]:
    """The PACS of a module's tests. Its storage is a temp dir deleted with it, so it is
    killed at the end rather than stopped (SIGTERM takes Orthanc about 3 s)."""
    require_orthanc()
    with Orthanc(graceful_stop=False) as server:
        yield server


@contextmanager
def run_up(
    config: Path,
    *,
    port: int,
    orthanc: Orthanc | None = None,
    aet: str = ANNOTATOR_AET,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> Iterator[RunningService]:
    """`pacs-annotator up --config CONFIG` until the block ends, its log printed at the end.

    With ``orthanc``, the service is registered there as modality "annotator" (AE ``aet``).
    """
    data_dir = Path(yaml.safe_load(config.read_text())["data_dir"])
    log_path = config.parent / f"service-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "up", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=timeout, proc=proc)
        if orthanc is not None:
            orthanc.add_modality("annotator", aet, "127.0.0.1", port)
        yield RunningService(config, data_dir, port, log_path, proc, env)
    finally:
        stop_process(proc, timeout=60)
        print(f"--- service log ({config}) ---\n{log_tail(log_path, max_lines=80)}")


@pytest.fixture(scope="module")
def service(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`pacs-annotator up` with embedded Redis and SQLite, registered in Orthanc."""
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("service")
    port = free_port()
    config = write_config(root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    with run_up(config, port=port, orthanc=orthanc) as running:
        yield running
