"""Shared pieces of the fault tests: a split stack (redis + scp + workers) and a test study."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from tests.integration.conftest import ANNOTATOR_AET, RunningService, write_config
from tests.support.orthanc import Orthanc, wait_for
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, require_binaries, wait_for_port
from tests.support.stack import RedisServer, ServiceProcess, write_split_config

JOB_TIMEOUT = 240.0


def write_study(folder: Path, *, slices: int = 24) -> tuple[str, list[Path]]:
    """A small CT phantom with a fresh Study Instance UID, as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_ct_phantom(
        slices=slices, size=96, pixel_spacing=3.6, study_uid=generate_uid(), seed=3
    )
    paths = []
    for i, ds in enumerate(phantom.datasets):
        path = folder / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(phantom.datasets[0].StudyInstanceUID), paths


def storescu(port: int, paths: list[Path], *, calling: str = "STORESCU") -> None:
    """Send with dcmtk's storescu, as a modality or PACS would."""
    result = subprocess.run(
        ["storescu", "-aet", calling, "-aec", ANNOTATOR_AET, "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"storescu failed: {result.stdout}{result.stderr}"


@dataclass
class SplitStack:
    """`pacs-annotator scp` and `worker` processes sharing a real Redis, SQLite and spool."""

    root: Path
    redis: RedisServer
    config: Path
    port: int
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _start(self, name: str, args: list[str], **kwargs: Any) -> ServiceProcess:
        proc = ServiceProcess(
            name, [*args, "--config", str(self.config)], self.root / f"{name}.log", **kwargs
        )
        self.processes.append(proc)
        return proc

    def start_scp(self) -> ServiceProcess:
        n = sum(p.name.startswith("scp") for p in self.processes)
        proc = self._start(f"scp{n}", ["scp"])
        wait_for_port("127.0.0.1", self.port, timeout=90, proc=proc.proc)
        return proc

    def start_worker(self, *, stall_seconds: float | None = None) -> ServiceProcess:
        n = sum(p.name.startswith("worker") for p in self.processes)
        if stall_seconds is None:
            return self._start(f"worker{n}", ["worker"])
        env = {
            "PA_TEST_SLOW_SECONDS": str(stall_seconds),
            "PA_TEST_SLOW_MARKERS": str(self.markers),
        }
        return self._start(
            f"worker{n}-stalling", ["worker"], module="tests.support.slow_worker", env=env
        )

    @property
    def markers(self) -> Path:
        return self.root / "stall-markers"

    def service(self) -> RunningService:
        """Reuse RunningService's CLI helpers (`jobs --json`) against this stack's config."""
        scp = next(p for p in reversed(self.processes) if p.name.startswith("scp"))
        return RunningService(self.config, self.data_dir, self.port, scp.log_path, scp.proc)

    def jobs_of(self, study_uid: str) -> list[dict[str, Any]]:
        return [j for j in self.service().jobs() if j["study_uid"] == study_uid]

    def wait_job(
        self, study_uid: str, accept: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            jobs = self.jobs_of(study_uid)
            return next((j for j in jobs if accept(j)), None)

        try:
            return wait_for(found, timeout=JOB_TIMEOUT, interval=0.5, message=what)
        except Exception:
            print(self.tails())
            raise

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)

    def stop(self) -> None:
        for proc in self.processes:
            proc.stop()
        self.redis.stop()


def split_stacks(orthanc: Orthanc, tmp_path: Path) -> Iterator[Callable[..., SplitStack]]:
    """For a fixture: ``make(**config_changes)`` builds a stack; all are stopped at the end."""
    require_binaries("redis-server", "storescu")
    stacks: list[SplitStack] = []

    def make(*, appendonly: bool = True, **changes: Any) -> SplitStack:
        root = tmp_path / f"stack{len(stacks)}"
        root.mkdir()
        redis = RedisServer(root / "redis", appendonly=appendonly).start()
        port = free_port()
        base = write_config(root / "base.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
        settings: dict[str, Any] = {
            "broker_url": redis.url,
            "worker": {"lease_seconds": 3, "visibility_timeout_seconds": 10},
            "recovery": {"interval_seconds": 1, "requeue_after_seconds": 3},
        }
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        config = write_split_config(base, root / "config.yaml", **settings)
        stack = SplitStack(root, redis, config, port)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.stop()
            print(stack.tails())
