"""Many workers at a glance: who works, which queues wait, how fast jobs come back.

Everything is computed from the job store and the heartbeats at request time, like the rest
of the monitor: the dashboard, ``/api/workers``, ``/api/activity``, ``/metrics`` and the
``pacs-annotator workers`` command all show the same numbers, whichever process asks.

A job's queue and worker are those its last attempt was taken from and by (recorded when a
worker process takes the message, ``worker.run.heartbeat``). Queue-to-result latency runs
from the job's last queueing to its final state; per-pipeline processing time is the job's
processing stage, counted once for every pipeline the job ran.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker.jobs.ops_store import OpsStore
from worker.jobs.store import Job, JobState, JobStore, iso
from worker.monitor.views import worker_dict

#: The dashboard's window and its bins.
WINDOW_HOURS = 24
#: Jobs read for the window at most (newest first): bounds a scrape on a very busy site.
WINDOW_JOB_LIMIT = 50_000


def worker_records(
    store: JobStore, ops: OpsStore, now: datetime, stale_after: float
) -> list[dict[str, Any]]:
    """Every worker process with a heartbeat row, with the jobs it finished in the last hour."""
    per_hour = store.finished_per_worker(now - timedelta(hours=1))
    return [
        {**worker_dict(w, now, stale_after), "jobs_per_hour": per_hour.get(w.name, 0)}
        for w in ops.workers()
    ]


def format_workers_table(records: Sequence[dict[str, Any]]) -> str:
    """The ``workers`` command's table (plain text, one line per worker process)."""
    head = ("WORKER", "HOST", "DEVICE", "QUEUES", "CURRENT JOB", "JOBS/H", "LAST SEEN")
    rows = [
        (
            r["name"],
            r["host"],
            r["device"],
            ",".join(r["queues"]),
            r["current_job"] or "idle",
            str(r["jobs_per_hour"]),
            (r["last_seen"] or "")[:19].replace("T", " ") + ("" if r["online"] else " OFFLINE"),
        )
        for r in records
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=False)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *rows)
    ]
    if not rows:
        lines.append("no worker heartbeat: no worker process has started, or none is connected")
    return "\n".join(lines)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, linear between ranks (numpy's default)."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def queue_to_result_seconds(job: Job) -> float | None:
    """From the job's last queueing to its final state; None if it never waited in a queue."""
    if job.queued_at is None or job.finished_at is None or job.finished_at < job.queued_at:
        return None
    return (job.finished_at - job.queued_at).total_seconds()


@dataclass
class Activity:
    """One group's (a queue's or a pipeline's) last hours, one bin per hour, oldest first."""

    name: str
    finished: list[int]
    failed: list[int]
    median: list[float | None]
    p95: list[float | None]
    latencies: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "name": self.name,
            "finished_per_hour": self.finished,
            "failed_per_hour": self.failed,
            "latency_median_seconds": self.median,
            "latency_p95_seconds": self.p95,
            "total_finished": sum(self.finished),
            "total_failed": sum(self.failed),
            "window_median_seconds": _finite(percentile(ordered, 50)),
            "window_p95_seconds": _finite(percentile(ordered, 95)),
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def activity(
    jobs: Iterable[Job], now: datetime, hours: int = WINDOW_HOURS
) -> dict[str, list[Activity]]:
    """Jobs finished per hour and queue-to-result latency (median, p95 of done jobs) per
    hour of the last ``hours``, per queue and per pipeline (``{"queues": [...], ...}``)."""
    start = now - timedelta(hours=hours)
    bins: dict[tuple[str, str], list[list[Job]]] = defaultdict(lambda: [[] for _ in range(hours)])
    for job in jobs:
        if job.finished_at is None or not start <= job.finished_at <= now:
            continue
        if job.state is JobState.CANCELLED:
            continue  # never ran: neither throughput nor latency
        index = min(int((job.finished_at - start).total_seconds() // 3600), hours - 1)
        bins[("queues", job.queue or "unrecorded")][index].append(job)
        for pipeline in dict.fromkeys(job.pipelines):
            bins[("pipelines", pipeline)][index].append(job)
    out: dict[str, list[Activity]] = {"queues": [], "pipelines": []}
    for (kind, name), hourly in sorted(bins.items()):
        group = Activity(name, [], [], [], [])
        for in_hour in hourly:
            done = [j for j in in_hour if j.state is JobState.DONE]
            latencies = sorted(s for s in map(queue_to_result_seconds, done) if s is not None)
            group.finished.append(len(in_hour))
            group.failed.append(len(in_hour) - len(done))
            group.median.append(_finite(percentile(latencies, 50)))
            group.p95.append(_finite(percentile(latencies, 95)))
            group.latencies.extend(latencies)
        out[kind].append(group)
    return out


def recent_activity(store: JobStore, now: datetime) -> dict[str, list[Activity]]:
    """``activity`` over the jobs that finished in the last ``WINDOW_HOURS``."""
    since = now - timedelta(hours=WINDOW_HOURS)
    return activity(store.finished(WINDOW_JOB_LIMIT, since=since), now)


def activity_dict(groups: dict[str, list[Activity]], now: datetime) -> dict[str, Any]:
    """``/api/activity``: the window, its hour bins' starts, and each group's series."""
    start = now - timedelta(hours=WINDOW_HOURS)
    return {
        "window_end": iso(now),
        "hour_starts": [iso(start + timedelta(hours=i)) for i in range(WINDOW_HOURS)],
        **{kind: [g.as_dict() for g in found] for kind, found in groups.items()},
    }


def queue_wait_by_queue(jobs: Iterable[Job]) -> dict[str, list[float]]:
    """Queue wait (queued to started) of each finished job's last attempt, per queue taken
    from; jobs finished before the queue was recorded are left out."""
    out: dict[str, list[float]] = defaultdict(list)
    for job in jobs:
        wait = job.stage_seconds().get("queue_wait")
        if job.queue is not None and wait is not None:
            out[job.queue].append(wait)
    return dict(out)


def processing_by_pipeline(jobs: Iterable[Job]) -> dict[str, list[float]]:
    """The processing stage of each finished job, once per pipeline it ran."""
    out: dict[str, list[float]] = defaultdict(list)
    for job in jobs:
        seconds = job.stage_seconds().get("processing")
        if seconds is None:
            continue
        for pipeline in dict.fromkeys(job.pipelines):
            out[pipeline].append(seconds)
    return dict(out)
