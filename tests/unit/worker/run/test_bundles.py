"""Bundle pipelines in the worker: warm models, queues, time limits and out-of-memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from pipelines.bundle import BundlePipeline
from pipelines.errors import DeviceOutOfMemoryError
from pipelines.findings import Algorithm, Findings
from pipelines.volume import Volume
from scu_scp.spool import Spool
from tests.support.bundles import CONV_1X1X1, segmentation_config, threshold_weights, write_bundle
from tests.support.jobs import FakePacs, make_settings, spool_study
from tests.support.phantom import make_ct_phantom
from worker.cli import EXIT_USAGE, main
from worker.config import (
    Settings,
    SettingsError,
    load_settings,
    with_worker_options,
    worker_hostname,
)
from worker.jobs.broker import PROCESS_STUDY
from worker.jobs.queues import JOB_OVERHEAD_SECONDS, JobRoute, plan_job, worker_queues
from worker.jobs.store import JobState, JobStore
from worker.run import tasks
from worker.run.processing import Runtime


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(
        tmp_path_factory.mktemp("bundles") / "dense",
        segmentation_config(CONV_1X1X1, pixdim=(6.0, 6.0, 8.0)),
        channel_def={"0": "background", "1": "bone"},
        state_dict=threshold_weights(300.0),
    )


def bundle_settings(tmp_path: Path, bundle: Path, **pipeline: Any) -> Settings:
    return make_settings(
        tmp_path,
        pipelines={"dense": {"bundle": str(bundle), **pipeline}},
        routing=[{"modality": "CT", "pipelines": ["ct-basic", "dense"]}],
    )


def study(seed: int) -> list[Dataset]:
    return make_ct_phantom(slices=16, size=64, pixel_spacing=5.5, seed=seed).datasets


def eager_app(settings: Settings, runtime: Runtime) -> Celery:
    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    tasks.register_tasks(app, settings, build=lambda: runtime)
    return app


def test_a_worker_loads_the_model_once_and_reuses_it(tmp_path: Path, bundle: Path) -> None:
    settings = bundle_settings(tmp_path, bundle)
    pacs = FakePacs()
    builds: list[Runtime] = []

    def build() -> Runtime:
        runtime = dataclasses.replace(tasks.build_runtime(settings), send=pacs)
        builds.append(runtime)
        return runtime

    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    tasks.register_tasks(app, settings, build=build)
    assert builds == [], "nothing loads before the first job (in the process, after fork)"
    # The SCP side: the same job database and spool, no pipelines.
    scp_side = Runtime(
        settings=settings,
        store=JobStore(settings.effective_database_url),
        spool=Spool(settings.spool_dir),
        pipelines={},
        send=pacs,
    )
    for seed in (1, 2):
        job_id = spool_study(scp_side, study(seed))
        app.tasks[PROCESS_STUDY].apply(args=[job_id])
        job = scp_side.store.get(job_id)
        assert job.state is JobState.DONE, job.error
        assert "dense" in job.pipelines
    [runtime] = builds
    pipeline = runtime.pipelines["dense"]
    assert isinstance(pipeline, BundlePipeline)
    assert pipeline.load_count == 1, "the second job used the warm model"
    segs = [uid for _, uid in pacs.received]
    assert len(segs) >= 4  # per job: the ct-basic SEG, the dense SEG and the SR


class _Failing:
    """A pipeline that fails the way a model on a GPU or a long model does."""

    modalities = frozenset({"CT"})

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self.algorithm = Algorithm(name=name, version="1")
        self._error = error

    def run(self, volume: Volume) -> Findings:
        raise self._error


def failing_runtime(tmp_path: Path, settings: Settings, error: BaseException) -> Runtime:
    return Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines={"dense": _Failing("dense", error)},
        send=FakePacs(),
    )


def only_dense(tmp_path: Path, bundle: Path, **pipeline: Any) -> Settings:
    return make_settings(
        tmp_path,
        pipelines={"dense": {"bundle": str(bundle), **pipeline}},
        routing=[{"modality": "CT", "pipelines": ["dense"]}],
    )


def test_out_of_memory_fails_the_job_with_the_reason(tmp_path: Path, bundle: Path) -> None:
    settings = only_dense(tmp_path, bundle)
    error = DeviceOutOfMemoryError(
        "dense: out of memory on cuda:0 for series 1.2.3", pipeline="dense", device="cuda:0"
    )
    runtime = failing_runtime(tmp_path, settings, error)
    app = eager_app(settings, runtime)
    job_id = spool_study(runtime, study(3))
    app.tasks[PROCESS_STUDY].apply(args=[job_id])
    job = runtime.store.get(job_id)
    assert job.state is JobState.FAILED
    assert job.error == "dense: out of memory on cuda:0 for series 1.2.3"


def test_out_of_memory_on_a_gpu_goes_to_the_fallback_queue(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = only_dense(tmp_path, bundle, queue="gpu", oom_fallback_queue="cpu")
    error = DeviceOutOfMemoryError("dense: out of memory", pipeline="dense", device="cuda:0")
    runtime = failing_runtime(tmp_path, settings, error)
    app = eager_app(settings, runtime)
    sent: list[tuple[str, list[str], str]] = []
    monkeypatch.setattr(
        app, "send_task", lambda name, args, queue: sent.append((name, args, queue))
    )
    job_id = spool_study(runtime, study(4))
    app.tasks[PROCESS_STUDY].apply(args=[job_id])
    job = runtime.store.get(job_id)
    assert job.state is JobState.QUEUED
    assert job.error and "out of memory" in job.error and "queued again on cpu" in job.error
    assert sent == [(PROCESS_STUDY, [job_id], "cpu")]


def test_soft_time_limit_fails_the_job_with_that_reason(tmp_path: Path, bundle: Path) -> None:
    settings = only_dense(tmp_path, bundle, time_limit_seconds=5)
    runtime = failing_runtime(tmp_path, settings, SoftTimeLimitExceeded())
    app = eager_app(settings, runtime)
    job_id = spool_study(runtime, study(5))
    app.tasks[PROCESS_STUDY].apply(args=[job_id], soft_time_limit=65)
    job = runtime.store.get(job_id)
    assert job.state is JobState.FAILED
    assert job.error and job.error.startswith("time limit exceeded")


def test_routing_picks_the_pipeline_queue_and_sums_time_limits(
    tmp_path: Path, bundle: Path
) -> None:
    settings = only_dense(tmp_path, bundle, queue="gpu", time_limit_seconds=100)
    paths = []
    for seed in (6, 7):  # two CT series in one study
        datasets = make_ct_phantom(
            slices=4, size=16, seed=seed, study_uid="2.25.77", series_uid=f"2.25.7{seed}"
        ).datasets
        for ds in datasets:
            folder = tmp_path / "study" / str(ds.SeriesInstanceUID)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    route = plan_job(settings, paths)
    assert route == JobRoute(queue="gpu", soft_time_limit=200 + JOB_OVERHEAD_SECONDS)
    # A routed pipeline without its own limit: the worker-wide limit applies.
    mixed = make_settings(
        tmp_path,
        pipelines={"dense": {"bundle": str(bundle), "queue": "gpu", "time_limit_seconds": 9}},
        routing=[{"modality": "CT", "pipelines": ["ct-basic", "dense"]}],
    )
    assert plan_job(mixed, paths) == JobRoute(queue="gpu", soft_time_limit=None)
    # Built-in pipelines only: the default queue, as before.
    assert plan_job(make_settings(tmp_path), paths) == JobRoute()
    assert worker_queues(settings) == ("pacs-annotator", "gpu")
    gpu_only = with_worker_options(settings, device="cuda:1", queues="gpu")
    assert worker_queues(gpu_only) == ("gpu",) and gpu_only.worker.device == "cuda:1"
    assert worker_hostname("cuda:1") == "pacs-annotator-cuda1"


def test_bad_settings_name_the_setting(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(SettingsError, match=r"pipelines\.dense"):
        load_settings(None, data_dir=tmp_path, pipelines={"dense": {"bundle": str(tmp_path)}})
    with pytest.raises(SettingsError, match=r"worker\.device"):
        load_settings(None, data_dir=tmp_path, worker={"device": "gpu0"})
    bad_colour = {"code": "272673000", "meaning": "Bone", "color": "red"}
    with pytest.raises(SettingsError, match=r"pipelines\.dense\.labels\.bone\.color.*#rrggbb"):
        load_settings(
            None,
            data_dir=tmp_path,
            pipelines={"dense": {"bundle": str(bundle), "labels": {"bone": bad_colour}}},
        )
    with pytest.raises(SettingsError, match="built-in"):
        load_settings(None, data_dir=tmp_path, pipelines={"ct-basic": {"bundle": str(bundle)}})
    with pytest.raises(SettingsError, match="unknown pipeline 'nope'"):
        load_settings(None, data_dir=tmp_path, routing=[{"pipelines": ["nope"]}])
    with pytest.raises(SettingsError, match="--device"):
        with_worker_options(load_settings(None, data_dir=tmp_path), device="tpu", queues=None)


def test_cli_worker_rejects_a_bad_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PACS_ANNOTATOR_BROKER_URL", "redis://127.0.0.1:1/0")
    assert main(["worker", "--device", "cuda:x"]) == EXIT_USAGE
    assert "--device" in capsys.readouterr().err


def test_cli_run_uses_a_configured_bundle(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\npipelines:\n  dense:\n    bundle: {bundle}\n"
        "    labels:\n      bone:\n        code: '272673000'\n        meaning: Bone\n"
        "        color: '#1428fa'\n"
    )
    series = tmp_path / "series"
    series.mkdir()
    for i, ds in enumerate(study(8)):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    argv = ["run", str(series), "--out", str(out), "--pipeline", "dense", "--config", str(config)]
    assert main(argv) == 0
    assert "dense done" in capsys.readouterr().out
    segs = [pydicom.dcmread(p) for p in out.glob("SEG-*.dcm")]
    assert [ds.SOPClassUID for ds in segs] == [SegmentationStorage]
    assert segs[0].SegmentSequence[0].SegmentLabel == "bone"
    colour = hd.color.CIELabColor.from_dicom_value(
        segs[0].SegmentSequence[0].RecommendedDisplayCIELabValue
    )
    assert colour.to_rgb() == (20, 40, 250)
