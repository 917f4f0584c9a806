"""A private redis-server for single-machine installs with no broker configured.

It asks for a password, generated on the first start into ``data_dir/redis/password``
(mode 0600) and given to redis-server in a config file, never on its command line, where
``ps`` would show it to every user of the machine. ``up`` keeps it running: if it dies it
is restarted on the same port and password, with back-off, and if it keeps dying ``up``
exits non-zero so that systemd restarts the whole service.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from worker.jobs.broker import URL_FILE
from worker.service.processes import child_dies_with_parent, free_port, stop_process

log = logging.getLogger(__name__)

PASSWORD_FILE = "password"
CONFIG_FILE = "redis.conf"
PID_FILE = "redis.pid"


class EmbeddedRedisError(RuntimeError):
    pass


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by this user only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file may have been wider
        out.write(text)


def broker_password(redis_dir: Path) -> str:
    """The embedded broker's password, generated (URL-safe) on the first start."""
    path = redis_dir / PASSWORD_FILE
    try:
        password = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(32)
        write_private(path, password + "\n")
    return password


class EmbeddedRedis:
    """Starts redis-server on a free loopback port with its data (AOF) under ``data_dir``.

    ``keep_alive()``, called by ``up``'s loop, restarts a dead server: at most
    ``max_restarts`` times in ``restart_window_seconds``, waiting ``restart_delay_seconds``
    before the first and twice as long before each next one.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        startup_timeout: float = 20.0,
        max_restarts: int = 5,
        restart_window_seconds: float = 600.0,
        restart_delay_seconds: float = 0.5,
    ) -> None:
        self._dir = data_dir
        self._timeout = startup_timeout
        self._max_restarts = max_restarts
        self._window = restart_window_seconds
        self._delay = restart_delay_seconds
        self._restarts: list[float] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._password = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "redis-server not found: install it (apt-get install redis-server) "
                "or set broker_url to an existing Redis"
            )
        self._dir.mkdir(parents=True, exist_ok=True)
        self._password = broker_password(self._dir)
        self.port = free_port()
        self._launch(binary)
        # Other commands on this machine (annotate --source) find the broker here.
        write_private(self._dir / URL_FILE, self.url + "\n")
        log.info("embedded redis-server on 127.0.0.1:%d (data in %s)", self.port, self._dir)
        return self.url

    def _launch(self, binary: str) -> None:
        root = self._dir.resolve()
        # Secrets and paths in a file (0600); ``ps`` shows the command line to everyone.
        config = "\n".join(
            [
                f'requirepass "{self._password}"',
                f"port {self.port}",
                "bind 127.0.0.1",
                f'dir "{root}"',
                # Queued jobs survive a restart: append-only file, fsync every second.
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "daemonize no",
                f'logfile "{root / "redis.log"}"',
                f'pidfile "{root / PID_FILE}"',
                "protected-mode yes",
            ]
        )
        write_private(self._dir / CONFIG_FILE, config + "\n")
        self._proc = subprocess.Popen(
            [binary, str(root / CONFIG_FILE)], preexec_fn=child_dies_with_parent
        )
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self._password, socket_connect_timeout=1
        )
        deadline = time.monotonic() + self._timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with {self._proc.returncode}; "
                        f"see {self._dir}/redis.log"
                    )
                try:
                    if client.ping():
                        return
                except (OSError, redis.ConnectionError):
                    pass
                if time.monotonic() > deadline:
                    stop_process(self._proc, timeout=10)
                    raise EmbeddedRedisError(
                        f"redis-server did not answer within {self._timeout} s"
                    )
                time.sleep(0.1)
        finally:
            client.close()

    def keep_alive(self) -> bool:
        """Restart redis-server if it died; False once it has died too often to go on.

        Same port and password, so the worker and the monitor reconnect by themselves,
        and the same append-only file, so queued jobs are still there.
        """
        proc = self._proc
        if proc is None or proc.poll() is None:
            return True
        log.error("embedded redis-server exited with status %s", proc.returncode)
        binary = shutil.which("redis-server")
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self._window]
        while binary is not None and len(self._restarts) < self._max_restarts:
            time.sleep(self._delay * 2 ** len(self._restarts))
            self._restarts.append(time.monotonic())
            try:
                self._launch(binary)
            except EmbeddedRedisError as exc:
                log.error("cannot restart the embedded redis-server: %s", exc)
                continue
            log.warning(
                "embedded redis-server restarted on 127.0.0.1:%d (restart %d of at most %d "
                "in %.0f s)",
                self.port,
                len(self._restarts),
                self._max_restarts,
                self._window,
            )
            return True
        log.error(
            "embedded redis-server died %d times within %.0f s; giving up",
            len(self._restarts) + 1,
            self._window,
        )
        return False

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
