"""The JSON shapes of the monitor's API: jobs and workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.jobs.ops_store import WorkerStatus
from worker.jobs.store import Job, iso, job_record

_DETAIL = ("outcomes", "delivered")


def job_dict(job: Job) -> dict[str, Any]:
    """A job as the API lists it: its record without the per-instance detail."""
    return {k: v for k, v in job_record(job).items() if k not in _DETAIL}


def job_detail_dict(job: Job, steps: dict[str, float]) -> dict[str, Any]:
    """A job with its series outcomes, delivered instances and processing steps (seconds)."""
    return {**job_record(job), "steps": steps}


def worker_dict(w: WorkerStatus, now: datetime, stale_after: float) -> dict[str, Any]:
    return {
        "name": w.name,
        "host": w.host,
        "device": w.device,
        "queues": list(w.queues),
        "pid": w.pid,
        "current_job": w.current_job,
        "started_at": iso(w.started_at),
        "last_seen": iso(w.last_seen),
        "online": w.online(now, stale_after),
    }
