"""The service split into its real processes, so a fault test can kill one and keep the others.

``RedisServer`` is a redis-server on a fixed free port that can be restarted (with or without
its append-only file); ``ServiceProcess`` is one `pacs-annotator scp` / `worker` process (or
the test-only slow worker) in its own process group, so SIGKILL takes its pool children too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.support.processes import free_port, log_tail, stop_process, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """A real redis-server on one port for its whole life, restartable."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, timeout=30, proc=self.proc)
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=0 if kill else 20)
            self.proc = None

    def queue_length(self, queue: str) -> int:
        client = self.client()
        try:
            return int(client.llen(queue))
        finally:
            client.close()


def write_split_config(base: Path, target: Path, **changes: Any) -> Path:
    """Copy a YAML config, deep-merging ``changes`` (nested dicts) into it."""
    config: dict[str, Any] = yaml.safe_load(base.read_text())

    def merge(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(config, changes)
    target.write_text(yaml.safe_dump(config))
    return target


class ServiceProcess:
    """One annotator process (``python -m worker ...`` or a test module) with its own log."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        module: str = "worker",
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix``: a command the process runs under (e.g. ``unshare`` for its own mounts)."""
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=dict(os.environ, **(env or {})),
                start_new_session=True,  # its own process group: kill() reaches pool children
            )

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up, no acknowledgement, as in a crash."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # any pool child left behind

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return f"--- {self.name} log ---\n{log_tail(self.log_path, max_lines=lines)}"
