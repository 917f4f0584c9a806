"""The private redis-server that `up` starts when no broker is configured: a real one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import redis

from tests.support.processes import pid_alive, require_binaries
from worker.service.embedded_redis import EmbeddedRedis, EmbeddedRedisError


def test_starts_keeps_queue_on_disk_and_stops(tmp_path: Path) -> None:
    require_binaries("redis-server")
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
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
