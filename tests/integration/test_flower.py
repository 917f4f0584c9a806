"""`pacs-annotator flower` beside the service: a real Flower on a real redis-server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.orthanc import wait_for
from tests.support.processes import free_port, log_tail, require_binaries, stop_process
from worker.service.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.integration


def test_flower_finds_the_embedded_broker_and_serves_its_ui(tmp_path: Path) -> None:
    require_binaries("redis-server")
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data)}))
    # The same embedded Redis `up` starts, publishing its URL under data_dir/redis.
    with EmbeddedRedis(data / "redis") as server:
        port = free_port()
        log_path = tmp_path / "flower.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "flower", "--config", str(config),
                 "--port", str(port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

        def answers() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.HTTPError:
                assert proc.poll() is None, log_tail(log_path)
                return None

        try:
            page = wait_for(answers, timeout=120, interval=0.5, message="Flower to answer")
            assert page.status_code == 200 and "Flower" in page.text
            log = log_path.read_text(errors="replace")
            assert f"Connected to redis://:**@127.0.0.1:{server.port}/0" in log, log
            # The broker password travels in Flower's environment, not on its command line.
            password = (data / "redis" / "password").read_text().strip()
            assert password not in log
            assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        finally:
            stop_process(proc, timeout=30)
