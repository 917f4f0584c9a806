"""Prometheus metrics computed at scrape time from the job DB, the spool and Redis.

In-process counters would count only what the monitor itself saw; the work happens in the
SCP and worker processes. Every value here is derived from durable records instead, so it
is right whichever process serves /metrics and survives restarts.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from scu_scp.admission import free_disk_bytes
from worker.jobs.store import JobState, utc_now
from worker.monitor.fleet import processing_by_pipeline, queue_wait_by_queue
from worker.monitor.state import Sources, pending_studies, queue_depth, storage

JOB_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
STAGE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STAGES = ("queue_wait", "processing", "delivery")


def _histogram_buckets(values: Sequence[float], bounds: Sequence[float]) -> list[tuple[str, float]]:
    ordered = sorted(values)
    buckets = [(repr(b), float(bisect.bisect_right(ordered, b))) for b in bounds]
    buckets.append(("+Inf", float(len(ordered))))
    return buckets


class ServiceCollector(Collector):
    """One collector reading the shared state on each scrape."""

    def __init__(self, sources: Sources) -> None:
        self._src = sources

    def collect(self) -> Iterable[Metric]:
        store = self._src.store
        counts = store.counts()
        instances_in_jobs, delivery_failures = store.totals()
        pending = pending_studies(self._src.spool)
        received = instances_in_jobs + sum(p.instances for p in pending)

        yield CounterMetricFamily(
            "pacs_annotator_instances_received",
            "DICOM instances received into the spool (in jobs or still incoming)",
            value=received,
        )
        yield CounterMetricFamily(
            "pacs_annotator_studies_completed",
            "Studies whose results were delivered (jobs done)",
            value=counts[JobState.DONE],
        )
        yield CounterMetricFamily(
            "pacs_annotator_delivery_failures",
            "Failed delivery attempts (each retry and each final failure)",
            value=delivery_failures,
        )
        by_state = GaugeMetricFamily("pacs_annotator_jobs", "Jobs by state", labels=["state"])
        for state, n in counts.items():
            by_state.add_metric([state.value], n)
        yield by_state
        yield GaugeMetricFamily(
            "pacs_annotator_studies_receiving",
            "Studies still in their quiet period",
            value=len(pending),
        )

        finished = store.finished()
        durations = [j.duration_seconds for j in finished if j.duration_seconds is not None]
        yield HistogramMetricFamily(
            "pacs_annotator_job_duration_seconds",
            "From received to a final state, per finished job",
            buckets=_histogram_buckets(durations, JOB_BUCKETS),
            sum_value=sum(durations),
        )
        stage = HistogramMetricFamily(
            "pacs_annotator_stage_duration_seconds",
            "Per stage of finished jobs: queue wait, processing, delivery",
            labels=["stage"],
        )
        for name in STAGES:
            values = [s[name] for s in (j.stage_seconds() for j in finished) if name in s]
            stage.add_metric([name], _histogram_buckets(values, STAGE_BUCKETS), sum(values))
        yield stage
        yield _labelled_histogram(
            "pacs_annotator_queue_wait_seconds",
            "Queue wait (queued to started) of finished jobs, per queue the job was taken from",
            "queue",
            queue_wait_by_queue(finished),
        )
        yield _labelled_histogram(
            "pacs_annotator_pipeline_processing_seconds",
            "Processing stage of finished jobs, per pipeline the job ran (once per pipeline)",
            "pipeline",
            processing_by_pipeline(finished),
        )

        ops = self._src.ops
        online = ops.workers(seen_within=self._src.settings.monitor.worker_stale_seconds)
        yield GaugeMetricFamily(
            "pacs_annotator_workers_online",
            "Worker processes with a recent heartbeat",
            value=len(online),
        )
        yield GaugeMetricFamily(
            "pacs_annotator_intake_paused",
            "1 while the SCP refuses new instances",
            value=1 if ops.intake_paused() else 0,
        )
        yield from _data_metrics(self._src)
        if self._src.redis is not None:
            depths = queue_depth(self._src)
            depth = GaugeMetricFamily(
                "pacs_annotator_queue_depth",
                "Messages waiting per Celery queue",
                labels=["queue"],
            )
            for queue, n in depths.items():
                depth.add_metric([queue], n)
            yield depth


def _labelled_histogram(
    name: str, documentation: str, label: str, by_label: dict[str, list[float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, seconds in sorted(by_label.items()):
        family.add_metric([value], _histogram_buckets(seconds, STAGE_BUCKETS), sum(seconds))
    return family


def _data_metrics(src: Sources) -> Iterable[Metric]:
    """Bytes, items and oldest age per kind of data, and free space: alerts on disk use."""
    usage, _pressure = storage(src)
    now = utc_now()
    size = GaugeMetricFamily(
        "pacs_annotator_data_bytes", "Bytes held per kind of data", labels=["kind"]
    )
    count = GaugeMetricFamily(
        "pacs_annotator_data_items",
        "Items per kind (studies, batches, results folders, files)",
        labels=["kind"],
    )
    oldest = GaugeMetricFamily(
        "pacs_annotator_data_oldest_age_seconds",
        "Age of the oldest item per kind (0 when there is none)",
        labels=["kind"],
    )
    for kind, u in usage.kinds.items():
        size.add_metric([kind], u.bytes)
        count.add_metric([kind], u.count)
        oldest.add_metric([kind], u.oldest_age_seconds(now))
    yield size
    yield count
    yield oldest
    yield GaugeMetricFamily(
        "pacs_annotator_data_freeable_bytes",
        "Bytes of delivered data the purge may remove early under disk pressure",
        value=usage.freeable_bytes,
    )
    settings = src.settings
    threshold = settings.retention.effective_pressure_free_bytes(settings.scp.min_free_disk_bytes)
    yield GaugeMetricFamily(
        "pacs_annotator_disk_pressure_threshold_bytes",
        "Free space below which the purge removes delivered data early (0: off)",
        value=threshold,
    )
    try:
        free = free_disk_bytes(src.spool.root)
    except OSError:
        return
    yield GaugeMetricFamily(
        "pacs_annotator_spool_free_bytes", "Free bytes on the spool's file system", value=free
    )


def render_metrics(sources: Sources) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(sources))
    return generate_latest(registry)
