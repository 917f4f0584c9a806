"""The admin subcommands through the real CLI entry point, on a real SQLite job store."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from worker.cli import main
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobState, JobStore
from worker.monitor.auth import verify_secret


def test_hash_password_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret phrase\n"))
    assert main(["hash-password", "--stdin"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert verify_secret("s3cret phrase", hashed) and not verify_secret("other", hashed)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["hash-password", "--stdin"]) == 2


def test_cancel_intake_and_retry_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    store = JobStore(f"sqlite:///{(tmp_path / 'data' / 'jobs.sqlite3').resolve()}")
    store.create(
        job_id="cli-job",
        study_uid="1.2.3",
        accession_number="A1",
        calling_ae="PACS",
        spool_path="/x",
        instance_count=1,
        received_at=datetime.now(UTC),
    )
    store.mark_queued("cli-job")
    assert main(["cancel", "cli-job", "--config", str(config)]) == 0
    assert store.get("cli-job").state is JobState.CANCELLED
    assert main(["cancel", "cli-job", "--config", str(config)]) == 1
    assert "only received or queued" in capsys.readouterr().err
    assert main(["cancel", "nope", "--config", str(config)]) == 1
    # No broker configured: the retry says so and the job records why it is not queued.
    assert main(["retry", "cli-job", "--config", str(config)]) == 1
    assert "broker_url is empty" in capsys.readouterr().err
    assert store.get("cli-job").state is JobState.FAILED
    assert main(["intake", "pause", "--config", str(config)]) == 0
    ops = OpsStore(store.engine)
    assert ops.intake_paused()
    assert main(["intake", "resume", "--config", str(config)]) == 0
    assert not ops.intake_paused()
    assert [e.action for e in ops.audit_entries()][:3] == [
        "resume-intake",
        "pause-intake",
        "retry-failed",
    ]
    assert all(e.actor.startswith("cli:") for e in ops.audit_entries())
    store.close()


def test_flower_needs_a_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    assert main(["flower", "--config", str(config)]) == 2
    assert "Flower needs the service's Redis URL" in capsys.readouterr().err


def test_every_command_is_documented_in_the_readme() -> None:
    from worker.cli import _COMMANDS, _parser

    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    parser = _parser()
    assert parser.parse_args(["monitor"]).command == "monitor"
    for name in _COMMANDS:
        assert f"| `{name}" in readme, name


def test_purge_from_the_cli_lists_then_removes_expired_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import timedelta

    from scu_scp.spool import Spool
    from tests.support.jobs import delivered_study

    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"data_dir": str(data), "retention": {"pressure_free_bytes": 0}})
    )
    store = JobStore(f"sqlite:///{(data / 'jobs.sqlite3').resolve()}")
    study = delivered_study(Spool(data / "spool"), store, timedelta(days=1))
    assert main(["purge", "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "would remove delivered_inputs" in out and study.batch_id in out
    assert study.path.is_dir()
    assert main(["purge", "--config", str(config)]) == 0
    assert "total delivered_inputs" in capsys.readouterr().out
    assert not study.path.exists()
    assert store.get(study.batch_id).inputs_purged_at is not None
    (entry,) = [e for e in OpsStore(store.engine).audit_entries() if e.action == "purge"]
    assert entry.actor.startswith("cli:")
