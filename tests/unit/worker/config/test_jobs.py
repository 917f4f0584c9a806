"""The workers' settings (device, queues, time limit, lease, visibility timeout) and recovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import DEFAULT_QUEUE, SettingsError, WorkerSettings, load_settings


def refusal(tmp_path: Path, **settings: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, data_dir=tmp_path, **settings)
    return str(info.value)


def test_defaults_one_cpu_worker_taking_every_queue(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    worker = settings.worker
    assert (worker.concurrency, worker.device, worker.queues) == (1, "cpu", ())
    assert (worker.job_time_limit_seconds, worker.lease_seconds) == (3600.0, 60.0)
    assert worker.visibility_timeout_seconds is None
    assert (settings.recovery.interval_seconds, settings.recovery.requeue_after_seconds) == (
        60.0,
        120.0,
    )
    assert DEFAULT_QUEUE == "pacs-annotator"


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_known_devices_are_accepted(device: str) -> None:
    assert WorkerSettings(device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:0 ", "mps"])
def test_other_devices_are_refused_naming_the_setting(tmp_path: Path, device: str) -> None:
    text = refusal(tmp_path, worker={"device": device})
    assert "  worker.device: " in text and f"must be cpu, cuda or cuda:N, not {device!r}" in text


def test_queue_names_are_checked_one_by_one(tmp_path: Path) -> None:
    good = ("gpu", "cpu.slow", "site:a_b-1", "q" * 64)
    assert WorkerSettings(queues=good).queues == good
    for bad in ("-gpu", "gpu queue", "q" * 65, "", "gpü"):
        text = refusal(tmp_path, worker={"queues": ["gpu", bad]})
        assert "  worker.queues: " in text and "a queue name is 1-64 letters" in text
        assert repr(bad) in text


def test_the_visibility_timeout_defaults_to_twice_the_time_limit_plus_ten_minutes() -> None:
    assert WorkerSettings().effective_visibility_timeout == 2 * 3600 + 600
    assert WorkerSettings(job_time_limit_seconds=60).effective_visibility_timeout == 720
    given = WorkerSettings(visibility_timeout_seconds=900, job_time_limit_seconds=60)
    assert given.effective_visibility_timeout == 900


@pytest.mark.parametrize("timeout", [30, 60])
def test_a_visibility_timeout_not_above_the_lease_is_refused(
    tmp_path: Path, timeout: float
) -> None:
    text = refusal(tmp_path, worker={"visibility_timeout_seconds": timeout, "lease_seconds": 60})
    assert "worker.visibility_timeout_seconds must exceed worker.lease_seconds" in text
    assert WorkerSettings(visibility_timeout_seconds=61, lease_seconds=60).lease_seconds == 60


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("worker", {"concurrency": 0}, "worker.concurrency"),
        ("worker", {"concurrency": 65}, "worker.concurrency"),
        ("worker", {"job_time_limit_seconds": 0}, "worker.job_time_limit_seconds"),
        ("worker", {"lease_seconds": 86401}, "worker.lease_seconds"),
        ("worker", {"visibility_timeout_seconds": 0}, "worker.visibility_timeout_seconds"),
        ("recovery", {"interval_seconds": 0}, "recovery.interval_seconds"),
        ("recovery", {"interval_seconds": 86401}, "recovery.interval_seconds"),
        ("recovery", {"requeue_after_seconds": -1}, "recovery.requeue_after_seconds"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_setting(
    tmp_path: Path, section: str, values: dict[str, Any], named: str
) -> None:
    assert f"  {named}: " in refusal(tmp_path, **{section: values})


def test_a_remote_worker_needs_its_token_file(tmp_path: Path) -> None:
    text = refusal(tmp_path, worker={"central_url": "https://central.example:8080"})
    assert "worker.central_url needs worker.central_token_file" in text
    missing = refusal(
        tmp_path,
        worker={"central_url": "https://c:8080", "central_token_file": str(tmp_path / "none")},
    )
    assert "is not a file" in missing
    assert "http:// or https://" in refusal(tmp_path, worker={"central_url": "central:8080"})
    token = tmp_path / "token"
    token.write_text("pawt_x\n")
    settings = load_settings(
        None,
        data_dir=tmp_path,
        worker={"central_url": "https://central.example:8080/", "central_token_file": str(token)},
    )
    assert settings.worker.central_url == "https://central.example:8080"
    assert settings.worker.transfer_attempts == 6
