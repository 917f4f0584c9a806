"""The Celery task: how each way a job can end is recorded in the real job store.

``process_job`` is replaced by a scripted fake (its own tests are in test_processing.py) and
the task runs eagerly; the job store is a real SQLite file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from pipelines.errors import DeviceOutOfMemoryError
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, make_settings, settings_only_bundle
from worker.config import Settings
from worker.delivery.deliver import TransientDeliveryError
from worker.jobs.broker import PROCESS_STUDY
from worker.jobs.queues import JobRoute
from worker.jobs.store import Job, JobState, JobStore, utc_now
from worker.run import tasks
from worker.run.celery_app import create_app
from worker.run.processing import Runtime
from worker.run.tasks import register_tasks, retry_delay, worker_app
from worker.run.transfer import TransferError

JOB = "job-1"


@dataclass
class World:
    settings: Settings
    runtime: Runtime
    app: Celery
    builds: list[int] = field(default_factory=list)
    enqueued: list[tuple[str, JobRoute | None]] = field(default_factory=list)

    def run(self, job_id: str = JOB, **options: Any) -> Any:
        return self.app.tasks[PROCESS_STUDY].apply(args=[job_id], **options)

    def job(self) -> Job:
        return self.runtime.store.get(JOB)


def make_world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Callable[[Runtime, str, int], Job],
    **settings: Any,
) -> World:
    """A worker app whose ``process_job`` follows ``script(runtime, job id, call number)``."""
    s = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0", **settings)
    store = JobStore(s.effective_database_url)
    store.create(
        job_id=JOB,
        study_uid="1.2.3",
        accession_number="ACC",
        calling_ae="ORTHANC",
        spool_path=str(tmp_path),
        instance_count=1,
        received_at=utc_now(),
    )
    runtime = Runtime(s, store, Spool(s.spool_dir), {}, FakePacs())
    app = create_app(s)  # the soft time limit of the settings; never connects when eager
    app.conf.task_always_eager = True
    world = World(s, runtime, app)
    calls: list[str] = []

    def build() -> Runtime:
        world.builds.append(1)
        return runtime

    def process_job(rt: Runtime, job_id: str) -> Job:
        calls.append(job_id)
        rt.store.claim(job_id, lease_seconds=60)
        return script(rt, job_id, len(calls))

    monkeypatch.setattr(tasks, "process_job", process_job)
    monkeypatch.setattr(
        tasks,
        "enqueue_job",
        lambda _app, job_id, route=None: world.enqueued.append((job_id, route)),
    )
    register_tasks(app, s, build=build)
    return world


def test_retries_back_off_exponentially_up_to_an_hour(tmp_path: Path) -> None:
    s = make_settings(tmp_path, delivery={"retry_delay_seconds": 30})
    assert [retry_delay(s, n) for n in range(4)] == [30.0, 60.0, 120.0, 240.0]
    assert retry_delay(s, 7) == 3600.0  # 30 * 2**7 = 3840: capped


def test_the_task_is_registered_by_name_and_builds_its_runtime_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make_world(
        tmp_path, monkeypatch, lambda rt, job_id, _n: rt.store.mark_done(job_id, delivered=[])
    )
    task = w.app.tasks[PROCESS_STUDY]
    assert (task.max_retries, task.acks_late, task.reject_on_worker_lost) == (5, True, True)
    assert w.builds == []  # nothing is built before the pool has forked
    w.run()
    w.run()
    assert w.builds == [1]  # then once per process, kept warm for later jobs
    assert w.job().state is JobState.DONE
    app = worker_app(w.settings)  # the real factory registers the same task, builds nothing
    assert PROCESS_STUDY in app.tasks


def test_a_transient_failure_is_retried_with_the_reason_then_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    def script(rt: Runtime, job_id: str, n: int) -> Job:
        seen.append(rt.store.get(job_id).error)
        if n < 3:
            raise TransientDeliveryError("destination pacs: connection refused")
        return rt.store.mark_done(job_id, delivered=[])

    w = make_world(tmp_path, monkeypatch, script, delivery={"retry_delay_seconds": 10})
    w.run()
    assert seen == [
        None,
        "destination pacs: connection refused (retry 1 in 10 s)",
        "destination pacs: connection refused (retry 2 in 20 s)",
    ]
    job = w.job()
    assert job.state is JobState.DONE and job.error is None


def test_the_last_transient_failure_fails_the_job_counting_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(_rt: Runtime, _job_id: str, _n: int) -> Job:
        raise TransientDeliveryError("destination pacs: connection refused")

    w = make_world(tmp_path, monkeypatch, script, delivery={"max_retries": 1})
    result = w.run()
    assert result.successful()  # recorded as failed in the store; Celery has nothing to redo
    job = w.job()
    assert job.state is JobState.FAILED
    assert job.error == "delivery failed after 2 attempts: destination pacs: connection refused"


def test_a_job_over_its_soft_time_limit_fails_saying_which_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(_rt: Runtime, _job_id: str, _n: int) -> Job:
        raise SoftTimeLimitExceeded()

    w = make_world(tmp_path, monkeypatch, script, worker={"job_time_limit_seconds": 900})
    w.run()
    assert w.job().state is JobState.FAILED
    assert w.job().error == (
        "time limit exceeded: the job ran longer than its soft time limit of 900 s"
    )


def test_an_unexpected_error_fails_the_job_with_its_type_and_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(_rt: Runtime, _job_id: str, _n: int) -> Job:
        raise KeyError("SeriesInstanceUID")

    w = make_world(tmp_path, monkeypatch, script)
    result = w.run()
    assert result.failed() and isinstance(result.result, KeyError)
    assert w.job().state is JobState.FAILED
    assert w.job().error == "internal error: KeyError: 'SeriesInstanceUID'"


def _out_of_memory(device: str) -> Callable[[Runtime, str, int], Job]:
    def script(_rt: Runtime, _job_id: str, _n: int) -> Job:
        raise DeviceOutOfMemoryError(
            f"pipeline seg: out of memory on {device}", pipeline="seg", device=device
        )

    return script


def test_out_of_gpu_memory_sends_the_job_to_the_pipelines_fallback_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = str(settings_only_bundle(tmp_path / "bundle"))
    seg = {"bundle": bundle, "queue": "gpu", "oom_fallback_queue": "cpu"}
    w = make_world(tmp_path, monkeypatch, _out_of_memory("cuda:0"), pipelines={"seg": seg})
    w.run()
    assert w.enqueued == [(JOB, JobRoute(queue="cpu"))]
    job = w.job()
    assert job.state is JobState.QUEUED
    assert job.error == "pipeline seg: out of memory on cuda:0 (queued again on cpu)"


@pytest.mark.parametrize(
    ("device", "fallback"),
    [("cuda:0", None), ("cpu", "cpu")],  # no fallback set; already out of memory on the CPU
)
def test_out_of_memory_without_a_fallback_fails_the_job_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, fallback: str | None
) -> None:
    bundle = str(settings_only_bundle(tmp_path / "bundle"))
    seg = {"bundle": bundle, "oom_fallback_queue": fallback}
    w = make_world(tmp_path, monkeypatch, _out_of_memory(device), pipelines={"seg": seg})
    w.run()
    assert w.enqueued == []
    assert (w.job().state, w.job().error) == (
        JobState.FAILED,
        f"pipeline seg: out of memory on {device}",
    )


def test_a_failed_study_transfer_is_retried_then_fails_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    def script(rt: Runtime, job_id: str, _n: int) -> Job:
        seen.append(rt.store.get(job_id).error)
        raise TransferError("job-1 study: the central node failed 6 times; last: ConnectError")

    w = make_world(
        tmp_path, monkeypatch, script, delivery={"max_retries": 1, "retry_delay_seconds": 10}
    )
    assert w.run().successful()
    assert seen[1] == (
        "study transfer failed: job-1 study: the central node failed 6 times; last: "
        "ConnectError (retry 1 in 10 s)"
    )
    job = w.job()
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.startswith("study transfer failed: job-1 study")


def test_a_transfer_failure_leaves_a_job_finished_elsewhere_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(rt: Runtime, job_id: str, _n: int) -> Job:
        rt.store.mark_done(job_id, delivered=[])  # another worker took over and finished
        raise TransferError("the central node refused ... (409): job-1 is done")

    w = make_world(tmp_path, monkeypatch, script)
    assert w.run().successful()
    assert w.job().state is JobState.DONE
