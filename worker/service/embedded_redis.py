"""A private redis-server for single-machine installs with no broker configured."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from worker.jobs.broker import URL_FILE
from worker.service.processes import child_dies_with_parent, free_port, stop_process

log = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    pass


class EmbeddedRedis:
    """Starts redis-server on a free loopback port with its data (AOF) under ``data_dir``."""

    def __init__(self, data_dir: Path, *, startup_timeout: float = 20.0) -> None:
        self._dir = data_dir
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "redis-server not found: install it (apt-get install redis-server) "
                "or set broker_url to an existing Redis"
            )
        self._dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self._dir.resolve()),
            # Queued jobs survive a restart: append-only file, fsync every second.
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str((self._dir / "redis.log").resolve()),
            "--protected-mode",
            "yes",
        ]
        self._proc = subprocess.Popen(args, preexec_fn=child_dies_with_parent)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + self._timeout
        while True:
            if self._proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self._proc.returncode}; see {self._dir}/redis.log"
                )
            try:
                if client.ping():
                    break
            except (OSError, redis.ConnectionError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(f"redis-server did not answer within {self._timeout} s")
            time.sleep(0.1)
        client.close()
        # Other commands on this machine (annotate --source) find the broker here.
        (self._dir / URL_FILE).write_text(self.url + "\n", encoding="utf-8")
        log.info("embedded redis-server on 127.0.0.1:%d (data in %s)", self.port, self._dir)
        return self.url

    def stop(self) -> None:
        (self._dir / URL_FILE).unlink(missing_ok=True)
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
            self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
