"""Which queue a job goes to and with which soft time limit; which queues a worker takes."""

from __future__ import annotations

from pathlib import Path

from scu_scp.spool import Spool
from tests.support.jobs import sealed_study, settings_only_bundle
from worker.config import DEFAULT_QUEUE, Settings, load_settings
from worker.jobs.queues import (
    JOB_OVERHEAD_SECONDS,
    JobRoute,
    configured_queues,
    plan_job,
    worker_queues,
)


def _settings(tmp_path: Path, **bundle: object) -> Settings:
    root = str(settings_only_bundle(tmp_path / "bundle"))
    return load_settings(
        None,
        data_dir=tmp_path / "data",
        pipelines={"seg": {"bundle": root, **bundle}},
        routing=[{"modality": "CT", "pipelines": ["seg"]}],
    )


def test_every_queue_a_job_may_go_to_is_configured_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path, queue="gpu", oom_fallback_queue=DEFAULT_QUEUE)
    assert configured_queues(settings) == (DEFAULT_QUEUE, "gpu")
    assert worker_queues(settings) == (DEFAULT_QUEUE, "gpu")
    only_gpu = load_settings(None, data_dir=tmp_path, worker={"queues": ["gpu"]})
    assert worker_queues(only_gpu) == ("gpu",)


def test_a_job_goes_to_its_pipeline_queue_with_the_summed_limit(tmp_path: Path) -> None:
    settings = _settings(tmp_path, queue="gpu", time_limit_seconds=100)
    study = sealed_study(Spool(tmp_path / "spool"))
    route = plan_job(settings, Spool.instance_paths(study))
    assert route == JobRoute(queue="gpu", soft_time_limit=100 + JOB_OVERHEAD_SECONDS)


def test_without_a_limit_for_every_pipeline_the_worker_limit_applies(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    study = sealed_study(Spool(tmp_path / "spool"))
    assert plan_job(settings, Spool.instance_paths(study)) == JobRoute()
    assert plan_job(settings, []) == JobRoute()
