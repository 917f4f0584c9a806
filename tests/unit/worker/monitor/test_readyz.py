"""/readyz against the SCP's own disk threshold, through the app on real stores and Redis."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.unit.worker.monitor.conftest import Env
from worker.monitor.app import create_monitor_app

MORE_THAN_ANY_DISK = 10**18


def test_readyz_fails_when_the_scp_would_refuse_for_disk(env: Env) -> None:
    """Only scp.min_free_disk_bytes is set: the SCP refuses, so /readyz must not be green."""
    scp = env.settings.scp.model_copy(update={"min_free_disk_bytes": MORE_THAN_ANY_DISK})
    settings = env.settings.model_copy(update={"scp": scp})
    assert settings.monitor.min_free_disk_mb == 0  # the monitor's own threshold is not set
    with TestClient(create_monitor_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["spool_disk"]["ok"] is False
    assert ready.json()["checks"]["redis"]["ok"] is True
