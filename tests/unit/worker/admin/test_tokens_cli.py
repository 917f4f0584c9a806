"""`pacs-annotator worker-token`: create (once, to a 0600 file), list, revoke, audited."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from worker.cli import main
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.jobs.worker_tokens import WorkerTokenStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\n")
    return path


def test_create_list_revoke(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu-1.token"
    assert (
        main(["worker-token", "create", "gpu-1", "--output", str(out), "--config", str(config)])
        == 0
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    token = out.read_text().strip()
    assert token not in capsys.readouterr().out

    store = JobStore(f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite3'}")
    tokens = WorkerTokenStore(store.engine)
    assert tokens.check(token) == "gpu-1"

    assert main(["worker-token", "create", "gpu-1", "--config", str(config)]) == 1
    assert "already has an active token" in capsys.readouterr().err

    assert main(["worker-token", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "gpu-1" in listed and "active" in listed and token not in listed

    assert main(["worker-token", "revoke", "gpu-1", "--config", str(config)]) == 0
    assert tokens.check(token) is None
    assert main(["worker-token", "revoke", "gpu-1", "--config", str(config)]) == 1
    assert main(["worker-token", "revoke", "--config", str(config)]) == 2

    actions = [(e.action, e.target) for e in OpsStore(store.engine).audit_entries(10)]
    assert ("worker-token-create", "gpu-1") in actions
    assert ("worker-token-revoke", "gpu-1") in actions
    store.close()
