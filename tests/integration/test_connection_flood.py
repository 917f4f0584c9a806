"""`pacs-annotator up` under a small connection flood: its scp.* connection settings apply.

Silent connections from several addresses, more than one address may hold, and a header
declaring 2 GiB, while the allowed PACS verifies the node with dcmtk echoscu.
"""

from __future__ import annotations

import socket
import struct
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ANNOTATOR_AET, run_up
from tests.support.edge import dcmtk
from tests.support.orthanc import wait_for
from tests.support.processes import free_port, require_binaries

pytestmark = pytest.mark.integration

PER_ADDRESS = 3
ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # 12 connections > 10 slots


def _connect(port: int, source: str) -> socket.socket:
    conn = socket.socket()
    conn.bind((source, 0))
    conn.settimeout(30)
    conn.connect(("127.0.0.1", port))
    return conn


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except OSError:
        return True


def test_up_keeps_serving_the_pacs_through_idle_and_half_open_connections(
    tmp_path: Path,
) -> None:
    require_binaries("redis-server", "echoscu")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "log_level": "INFO",
                "scp": {
                    "ae_title": ANNOTATOR_AET,
                    "host": "127.0.0.1",
                    "port": port,
                    "allowed_callers": [{"ae_title": "PACS"}],
                    "associate_request_timeout_seconds": 2,
                    "max_connections_per_address": PER_ADDRESS,
                },
                "monitor": {"port": free_port()},
            }
        )
    )
    echo = ["-aet", "PACS", "-aec", ANNOTATOR_AET, "127.0.0.1", str(port)]
    with run_up(config, port=port) as service, ExitStack() as stack:
        idle = [
            stack.enter_context(_connect(port, source))
            for source in ATTACKERS
            for _ in range(PER_ADDRESS)
        ]
        extra = stack.enter_context(_connect(port, ATTACKERS[0]))
        huge = stack.enter_context(_connect(port, "127.0.0.6"))
        huge.sendall(struct.pack(">BBI", 0x04, 0x00, 2**31) + bytes(100))

        assert dcmtk("echoscu", *echo).returncode == 0
        assert _closed_by_peer(extra) and _closed_by_peer(huge)
        assert all(_closed_by_peer(conn) for conn in idle)  # after 2 s, not held
        assert wait_for(lambda: "127.0.0.5 closed: idle" in service.log(), timeout=30)
        log = service.log()
        assert f"connection from {ATTACKERS[0]} refused: {PER_ADDRESS} connections" in log
        assert "connection from 127.0.0.6 dropped: PDU declares 2147483648 bytes" in log
        assert dcmtk("echoscu", *echo).returncode == 0
