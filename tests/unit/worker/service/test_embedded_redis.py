"""The private redis-server that `up` starts when no broker is configured: a real one."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest
import redis

from tests.support.processes import pid_alive, require_binaries
from worker.service.embedded_redis import EmbeddedRedis, EmbeddedRedisError


def test_starts_keeps_queue_on_disk_and_stops(tmp_path: Path) -> None:
    require_binaries("redis-server")
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as server:
        password = (data / "password").read_text().strip()
        assert server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        client.lpush("pacs-annotator", "job-1")
        assert client.info("persistence")["aof_enabled"] == 1
        client.close()
        proc = server._proc
        assert proc is not None
        pid = proc.pid
    assert not pid_alive(pid)
    # Restarted on the same data directory, the queued message is still there.
    with EmbeddedRedis(data) as again:
        client = redis.Redis.from_url(again.url)
        assert client.lrange("pacs-annotator", 0, -1) == [b"job-1"]
        client.close()


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(EmbeddedRedisError, match="apt-get install redis-server"):
        EmbeddedRedis(tmp_path).start()


def test_asks_for_a_password_kept_private_and_off_the_command_line(tmp_path: Path) -> None:
    require_binaries("redis-server")
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as server:
        stranger = redis.Redis(host="127.0.0.1", port=server.port)
        with pytest.raises(redis.AuthenticationError):
            stranger.lpush("pacs-annotator", "forged-job")
        stranger.close()
        password = (data / "password").read_text().strip()
        assert len(password) >= 32
        for name in ("password", "redis.conf", "url"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        assert server.pid is not None
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert password not in cmdline
        assert server.url == (data / "url").read_text().strip()
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
    with EmbeddedRedis(data) as again:  # the same password on the next start
        assert password in again.url


def _kill(server: EmbeddedRedis) -> None:
    """kill -9, then wait until all its threads are gone (its status can be collected)."""
    proc = server._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)


def test_a_killed_server_is_restarted_with_its_queue_and_password(tmp_path: Path) -> None:
    require_binaries("redis-server")
    with EmbeddedRedis(tmp_path / "redis", restart_delay_seconds=0.01) as server:
        client = redis.Redis.from_url(server.url)
        client.lpush("pacs-annotator", "job-1")
        time.sleep(1.5)  # appendfsync everysec: what the AOF promises
        pid, url = server.pid, server.url
        _kill(server)
        assert server.keep_alive()
        assert server.pid != pid and server.url == url
        assert client.lrange("pacs-annotator", 0, -1) == [b"job-1"]  # reconnects by itself
        client.close()


def test_a_server_that_keeps_dying_gives_up(tmp_path: Path) -> None:
    require_binaries("redis-server")
    with EmbeddedRedis(tmp_path / "redis", max_restarts=2, restart_delay_seconds=0.01) as server:
        for _ in range(2):
            _kill(server)
            assert server.keep_alive()
        _kill(server)
        assert not server.keep_alive()
