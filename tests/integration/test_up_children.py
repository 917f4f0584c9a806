"""`up` stops when a process it started dies, so a supervisor restarts the whole service."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.processes import (
    free_port,
    log_tail,
    require_binaries,
    start_command,
    stop_process,
)

pytestmark = pytest.mark.integration


def test_up_exits_non_zero_when_its_monitor_cannot_run(tmp_path: Path) -> None:
    require_binaries("redis-server")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    monitor_port = taken.getsockname()[1]
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "scp": {"host": "127.0.0.1", "port": free_port()},
                "monitor": {"host": "127.0.0.1", "port": monitor_port},
            }
        )
    )
    log_path = tmp_path / "up.log"
    proc = start_command("up", config, log_path)
    try:
        status = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop_process(proc, timeout=30)
        pytest.fail(f"up kept running without its monitor:\n{log_tail(log_path)}")
    finally:
        taken.close()
    log = log_path.read_text(errors="replace")
    assert status == 1, log
    assert "monitor process exited with status" in log, log
