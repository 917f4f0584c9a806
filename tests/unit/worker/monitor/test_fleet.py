"""Many workers: every queue's depth, per-queue and per-pipeline histograms, workers with
jobs per hour, the 24 h activity the dashboard draws, and the ``workers`` command.

The queue test sends jobs through the producers' real path (``job_enqueuer``: routing,
Celery, a real redis-server) with no worker running, so they wait in their queue.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from scu_scp.spool import Spool
from tests.support.fleet import T0, Clock, run_job
from tests.support.jobs import create_job, sealed_study, settings_only_bundle
from tests.support.processes import require_binaries
from tests.unit.worker.monitor.conftest import OWN_ORIGIN, TOKEN, bearer
from worker.cli import main
from worker.config import DEFAULT_QUEUE, load_settings
from worker.jobs import ops_store
from worker.jobs import store as store_module
from worker.jobs.dispatch import Dispatcher
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import Job, JobState, JobStore
from worker.monitor.app import create_monitor_app
from worker.monitor.auth import hash_secret
from worker.monitor.charts import jobs_per_hour_chart, latency_chart
from worker.monitor.fleet import activity, percentile, worker_records
from worker.monitor.metrics import render_metrics
from worker.monitor.state import Sources
from worker.run.celery_app import job_enqueuer
from worker.service.embedded_redis import EmbeddedRedis

NOW = T0


def test_waiting_jobs_of_a_gpu_pipeline_show_in_api_queues_and_metrics(tmp_path: Path) -> None:
    require_binaries("redis-server")
    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = load_settings(
            None,
            data_dir=tmp_path / "data",
            broker_url=server.url,
            pipelines={
                "seg": {"bundle": str(settings_only_bundle(tmp_path / "b")), "queue": "gpu"}
            },
            routing=[{"modality": "CT", "pipelines": ["seg"]}],
            monitor={"token_hash": hash_secret(TOKEN)},
        )
        store, spool = JobStore(settings.effective_database_url), Spool(settings.spool_dir)
        dispatch = Dispatcher(store, spool, job_enqueuer(settings, spool))
        for _ in range(3):
            assert dispatch.dispatch(sealed_study(spool)).state is JobState.QUEUED
        client = redis.Redis.from_url(server.url)
        try:
            with TestClient(create_monitor_app(settings), headers=OWN_ORIGIN) as http:
                assert http.get("/api/queues", headers=bearer()).json() == {
                    DEFAULT_QUEUE: 0,
                    "gpu": 3,
                }
                text = http.get("/metrics").text
            depth = {
                s.labels["queue"]: s.value
                for f in text_string_to_metric_families(text)
                if f.name == "pacs_annotator_queue_depth"
                for s in f.samples
            }
            assert depth == {DEFAULT_QUEUE: 0, "gpu": 3}
            # A queue only a worker's heartbeat names (a worker with its own settings).
            ops = OpsStore(store.engine)
            ops.heartbeat(
                "far/1",
                device="cuda:1",
                queues=("big-gpu",),
                pid=1,
                current_job=None,
                started_at=datetime.now(UTC),
                host="far",
            )
            with TestClient(create_monitor_app(settings), headers=OWN_ORIGIN) as http:
                assert http.get("/api/queues", headers=bearer()).json()["big-gpu"] == 0
        finally:
            client.close()
            store.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(NOW)
    monkeypatch.setattr(store_module, "utc_now", clock)
    monkeypatch.setattr(ops_store, "utc_now", clock)
    return clock


@pytest.fixture
def sources(tmp_path: Path, clock: Clock) -> Iterator[Sources]:
    settings = load_settings(None, data_dir=tmp_path / "data")
    store = JobStore(settings.effective_database_url)
    yield Sources(settings, store, OpsStore(store.engine), Spool(settings.spool_dir), None)
    store.close()


def _samples(sources: Sources, name: str) -> dict[tuple[str, str], float]:
    """(label value, sample suffix with bound) -> value of one labelled histogram."""
    text = render_metrics(sources).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            label = next(v for k, v in s.labels.items() if k != "le")
            suffix = s.name[len(name) :] + (f"{{{s.labels['le']}}}" if "le" in s.labels else "")
            out[(label, suffix)] = s.value
    return out


def test_metrics_histograms_per_queue_and_per_pipeline(sources: Sources, clock: Clock) -> None:
    store = sources.store
    t = NOW - timedelta(hours=2)
    run_job(
        store,
        clock,
        "a",
        queue="gpu",
        worker="h1/1",
        pipelines=["seg", "ct-basic"],
        at=t,
        wait=4,
        processing=20,
    )
    run_job(
        store,
        clock,
        "b",
        queue="gpu",
        worker="h2/7",
        pipelines=["seg"],
        at=t,
        wait=40,
        processing=200,
    )
    run_job(
        store,
        clock,
        "c",
        queue=DEFAULT_QUEUE,
        worker="h1/1",
        pipelines=["ct-basic"],
        at=t,
        wait=1.5,
        processing=3,
    )

    wait = _samples(sources, "pacs_annotator_queue_wait_seconds")
    assert (wait[("gpu", "_count")], wait[("gpu", "_sum")]) == (2, 44)
    assert (wait[("gpu", "_bucket{5.0}")], wait[("gpu", "_bucket{60.0}")]) == (1, 2)
    assert (wait[(DEFAULT_QUEUE, "_count")], wait[(DEFAULT_QUEUE, "_sum")]) == (1, 1.5)

    processing = _samples(sources, "pacs_annotator_pipeline_processing_seconds")
    assert (processing[("seg", "_count")], processing[("seg", "_sum")]) == (2, 220)
    assert (processing[("ct-basic", "_count")], processing[("ct-basic", "_sum")]) == (2, 23)
    assert processing[("seg", "_bucket{30.0}")] == 1
    assert processing[("seg", "_bucket{+Inf}")] == 2


def test_a_duplicate_message_does_not_rename_the_worker_of_a_running_job(
    sources: Sources, clock: Clock
) -> None:
    store = sources.store
    create_job(store, "j", received_at=NOW)
    store.mark_queued("j")
    assert store.note_pickup("j", worker="first/1", queue="gpu")
    store.claim("j", lease_seconds=60)
    assert not store.note_pickup("j", worker="second/2", queue=DEFAULT_QUEUE)
    job = store.get("j")
    assert (job.worker, job.queue) == ("first/1", "gpu")


def test_workers_with_host_and_jobs_per_hour_and_the_workers_command(
    sources: Sources, clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, ops = sources.store, sources.ops
    for name, host, device in (
        ("gpu-box/11", "gpu-box", "cuda:0"),
        ("cpu-box/5", "cpu-box", "cpu"),
    ):
        ops.heartbeat(
            name,
            host=host,
            device=device,
            queues=("gpu", DEFAULT_QUEUE),
            pid=1,
            current_job=None,
            started_at=NOW - timedelta(hours=3),
        )
    for i in range(3):  # two within the last hour, one before
        run_job(
            store,
            clock,
            f"g{i}",
            queue="gpu",
            worker="gpu-box/11",
            pipelines=["seg"],
            at=NOW - timedelta(minutes=10 + 30 * i),
            wait=1,
            processing=5,
        )
    clock.now = NOW
    ops.heartbeat(
        "gpu-box/11",
        host="gpu-box",
        device="cuda:0",
        queues=("gpu", DEFAULT_QUEUE),
        pid=1,
        current_job="g9",
        started_at=NOW - timedelta(hours=3),
    )

    records = {r["name"]: r for r in worker_records(store, ops, NOW, 60.0)}
    gpu = records["gpu-box/11"]
    assert (gpu["host"], gpu["device"], gpu["queues"], gpu["current_job"]) == (
        "gpu-box",
        "cuda:0",
        ["gpu", DEFAULT_QUEUE],
        "g9",
    )
    assert (gpu["jobs_per_hour"], records["cpu-box/5"]["jobs_per_hour"]) == (2, 0)

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(sources.settings.data_dir)}))
    assert main(["workers", "--config", str(config), "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["gpu-box/11"]["jobs_per_hour"] == 2 and listed["gpu-box/11"]["host"] == "gpu-box"
    assert main(["workers", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["WORKER", "HOST", "DEVICE"]
    row = next(line for line in table if line.startswith("gpu-box/11"))
    assert re.search(r"gpu-box\s+cuda:0\s+gpu,pacs-annotator\s+g9\s+2\s", row), row


def _job(
    job_id: str,
    *,
    finished: datetime,
    queued_for: float,
    state: JobState = JobState.DONE,
    queue: str | None = "gpu",
    pipelines: tuple[str, ...] = ("seg",),
) -> Job:
    queued = finished - timedelta(seconds=queued_for)
    return Job(
        id=job_id,
        study_uid="1.2",
        accession_number="",
        calling_ae="PACS",
        spool_path="",
        instance_count=1,
        state=state,
        attempts=1,
        error=None,
        pipelines=pipelines,
        outcomes=(),
        delivered=(),
        received_at=queued,
        queued_at=queued,
        started_at=queued,
        finished_at=finished,
        queue=queue,
    )


def test_activity_bins_jobs_per_hour_and_latency_per_queue_and_pipeline() -> None:
    last_hour = NOW - timedelta(minutes=10)
    jobs = [
        *(_job(f"d{i}", finished=last_hour, queued_for=10.0 * (i + 1)) for i in range(20)),
        _job("f", finished=last_hour, queued_for=5, state=JobState.FAILED),
        _job(
            "old",
            finished=NOW - timedelta(hours=5, minutes=30),
            queued_for=7,
            queue=DEFAULT_QUEUE,
            pipelines=("ct-basic", "seg"),
        ),
        _job("c", finished=last_hour, queued_for=1, state=JobState.CANCELLED),
        _job("ancient", finished=NOW - timedelta(hours=30), queued_for=1),
    ]
    groups = activity(jobs, NOW)
    queues = {g.name: g for g in groups["queues"]}
    assert set(queues) == {"gpu", DEFAULT_QUEUE}
    gpu = queues["gpu"]
    assert len(gpu.finished) == 24 and gpu.finished[-1] == 21 and sum(gpu.finished) == 21
    assert gpu.failed[-1] == 1
    latencies = [10.0 * (i + 1) for i in range(20)]
    assert gpu.median[-1] == pytest.approx(105.0)  # failed jobs have no result: not in latency
    assert gpu.p95[-1] == pytest.approx(percentile(latencies, 95))
    assert gpu.median[:-1] == [None] * 23
    default = queues[DEFAULT_QUEUE]
    assert default.finished[24 - 6] == 1 and default.median[24 - 6] == 7.0
    pipelines = {g.name: g for g in groups["pipelines"]}
    assert sum(pipelines["seg"].finished) == 22 and sum(pipelines["ct-basic"].finished) == 1
    summary = gpu.as_dict()
    assert (summary["total_finished"], summary["total_failed"]) == (21, 1)
    assert summary["window_median_seconds"] == pytest.approx(105.0)


def test_percentile_matches_the_usual_definition() -> None:
    import numpy as np

    values = sorted([3.0, 1.0, 40.0, 7.5, 12.0, 2.0])
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_charts_draw_what_they_are_given() -> None:
    finished = [0] * 22 + [4, 8]
    chart = str(jobs_per_hour_chart("jobs <queue> gpu", finished, [0] * 23 + [2]))
    assert 'data-total="12"' in chart and 'data-bars="2"' in chart
    assert "<title>jobs &lt;queue&gt; gpu</title>" in chart  # escaped
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([0-9.]+)"', chart)]
    assert len(heights) == 2 and heights[1] == pytest.approx(2 * heights[0])
    assert "style=" not in chart  # CSP: style-src 'self' would block inline styles
    lines = str(latency_chart("latency", [None] * 22 + [30.0, 90.0], [None] * 22 + [60.0, 240.0]))
    assert 'data-points="2"' in lines
    assert re.search(r'class="median" points="[0-9.]+,[0-9.]+ [0-9.]+,[0-9.]+"', lines)
    assert ">5 min<" in lines  # the y axis's top, rounded up from 240 s
    gap = str(latency_chart("latency", [5.0, None, 7.0] + [None] * 21, [None] * 24))
    assert gap.count('class="median"') == 2  # no line across the hour without a job
    empty = str(latency_chart("latency", [None] * 24, [None] * 24))
    assert "polyline" not in empty and 'data-points="0"' in empty
