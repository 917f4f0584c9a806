"""/metrics: every value derived at scrape time from the job DB, the spool and Redis.

Real SQLite store and spool with a clock moved by hand; a fake Redis answers LLEN.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from scu_scp.spool import Spool
from tests.support.jobs import FakeRedis, store_instances
from tests.support.phantom import make_ct_phantom
from worker.config import load_settings
from worker.jobs import ops_store
from worker.jobs import store as store_module
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.monitor.metrics import render_metrics
from worker.monitor.state import Sources

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(store_module, "utc_now", clock)
    monkeypatch.setattr(ops_store, "utc_now", clock)
    return clock


@pytest.fixture
def sources(tmp_path: Path, clock: Clock) -> Sources:
    settings = load_settings(None, data_dir=tmp_path / "data")
    store = JobStore(settings.effective_database_url)
    return Sources(settings, store, OpsStore(store.engine), Spool(settings.spool_dir), None)


def _create(store: JobStore, job_id: str, instances: int) -> None:
    store.create(
        job_id=job_id,
        study_uid=f"1.2.{len(job_id)}",
        accession_number="",
        calling_ae="PACS",
        spool_path="",
        instance_count=instances,
        received_at=T0,
    )


def scrape(sources: Sources) -> dict[str, list[Sample]]:
    text = render_metrics(sources).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def values(samples: list[Sample], **labels: str) -> dict[str, float]:
    """Sample name (with its ``le`` bound for buckets) -> value, for samples with ``labels``."""
    out = {}
    for s in samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            bound = s.labels.get("le")
            out[f"{s.name}{{{bound}}}" if bound else s.name] = s.value
    return out


def test_an_empty_service_reports_zeros_and_no_queue_depth(sources: Sources) -> None:
    metrics = scrape(sources)
    assert metrics["pacs_annotator_instances_received"][0].value == 0
    assert {s.labels["state"]: s.value for s in metrics["pacs_annotator_jobs"]} == {
        state: 0.0
        for state in ("received", "queued", "running", "delivering", "done", "failed", "cancelled")
    }
    assert (
        values(metrics["pacs_annotator_job_duration_seconds"])[
            "pacs_annotator_job_duration_seconds_count"
        ]
        == 0
    )
    assert metrics["pacs_annotator_workers_online"][0].value == 0
    assert metrics["pacs_annotator_intake_paused"][0].value == 0
    assert "pacs_annotator_queue_depth" not in metrics  # no broker configured


def test_counts_durations_and_stages_come_from_the_job_rows(sources: Sources, clock: Clock) -> None:
    store = sources.store
    _create(store, "done-after-a-retry", 5)  # received at T0
    clock.at(2)
    store.mark_queued("done-after-a-retry")
    clock.at(4)
    store.claim("done-after-a-retry", lease_seconds=60)
    clock.at(14)
    store.mark_delivering("done-after-a-retry", pipelines=["ct-basic"], outcomes=[])
    clock.at(15)
    store.mark_delivery_failed("done-after-a-retry", "PACS down")
    clock.at(20)
    store.claim("done-after-a-retry", lease_seconds=60)  # the last attempt's stages count
    clock.at(30)
    store.mark_delivering("done-after-a-retry", pipelines=["ct-basic"], outcomes=[])
    clock.at(33)
    store.mark_done("done-after-a-retry", delivered=[])

    _create(store, "failed", 3)
    clock.at(1)
    store.mark_queued("failed")
    clock.at(2)
    store.claim("failed", lease_seconds=60)
    clock.at(602)
    store.mark_failed("failed", "time limit exceeded")

    _create(store, "waiting", 2)
    store.mark_queued("waiting")

    metrics = scrape(sources)
    assert metrics["pacs_annotator_instances_received"][0].value == 10
    assert metrics["pacs_annotator_studies_completed"][0].value == 1
    assert metrics["pacs_annotator_delivery_failures"][0].value == 1
    jobs = {s.labels["state"]: s.value for s in metrics["pacs_annotator_jobs"]}
    assert (jobs["done"], jobs["failed"], jobs["queued"], jobs["running"]) == (1, 1, 1, 0)

    duration = values(metrics["pacs_annotator_job_duration_seconds"])
    name = "pacs_annotator_job_duration_seconds"
    assert duration[f"{name}_count"] == 2 and duration[f"{name}_sum"] == 33 + 602
    assert [duration[f"{name}_bucket{{{b}}}"] for b in ("30.0", "60.0", "600.0", "1800.0")] == [
        0,
        1,
        1,
        2,
    ]
    assert duration[f"{name}_bucket{{+Inf}}"] == 2

    stage = metrics["pacs_annotator_stage_duration_seconds"]
    name = "pacs_annotator_stage_duration_seconds"
    queue_wait = values(stage, stage="queue_wait")
    assert queue_wait[f"{name}_sum"] == 18 + 1  # from queued (T0+2) to the last start (T0+20)
    assert (queue_wait[f"{name}_bucket{{1.0}}"], queue_wait[f"{name}_bucket{{30.0}}"]) == (1, 2)
    processing = values(stage, stage="processing")
    assert processing[f"{name}_sum"] == 10 + 600
    assert processing[f"{name}_bucket{{10.0}}"] == 1  # a bound counts values equal to it
    delivery = values(stage, stage="delivery")
    assert (delivery[f"{name}_count"], delivery[f"{name}_sum"]) == (1, 3)  # the failed job had none


def test_studies_still_receiving_count_their_instances(sources: Sources) -> None:
    store_instances(sources.spool, make_ct_phantom(slices=3, size=16, pixel_spacing=10.0).datasets)
    _create(sources.store, "job", 4)
    metrics = scrape(sources)
    assert metrics["pacs_annotator_studies_receiving"][0].value == 1
    assert metrics["pacs_annotator_instances_received"][0].value == 3 + 4


def test_workers_online_intake_pause_and_queue_depth(sources: Sources, clock: Clock) -> None:
    def beat(name: str) -> None:
        sources.ops.heartbeat(name, device="cpu", queues=(), pid=1, current_job=None, started_at=T0)

    beat("gone/1")
    clock.at(600)
    beat("here/2")
    clock.at(630)  # gone/1 last seen 630 s ago; the stale limit is 60 s
    sources.ops.set_intake_paused(True, "admin")
    with_broker = Sources(
        sources.settings,
        sources.store,
        sources.ops,
        sources.spool,
        FakeRedis({"pacs-annotator": 4, "pacs-annotator\x06\x163": 1}),  # type: ignore[arg-type]
    )
    metrics = scrape(with_broker)
    assert metrics["pacs_annotator_workers_online"][0].value == 1
    assert metrics["pacs_annotator_intake_paused"][0].value == 1
    depth = {s.labels["queue"]: s.value for s in metrics["pacs_annotator_queue_depth"]}
    assert depth == {"pacs-annotator": 5}
    down = Sources(
        sources.settings,
        sources.store,
        sources.ops,
        sources.spool,
        FakeRedis({}, down=True),  # type: ignore[arg-type]
    )
    assert "pacs_annotator_queue_depth" in scrape(down)  # Redis down: still scraped, empty
    assert scrape(down)["pacs_annotator_queue_depth"] == []
