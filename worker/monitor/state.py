"""What the monitor shows, read fresh from the job DB, the spool and Redis at each request.

The SCP, the workers and the monitor are separate processes: nothing here is kept in memory
between requests, so every number is the same whichever process serves it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from scu_scp.spool import Spool
from worker.celery_app import DEFAULT_QUEUE
from worker.jobs import Job, JobStore
from worker.ops_store import OpsStore, WorkerStatus
from worker.settings import Settings

# kombu's Redis transport keeps priorities 3, 6, 9 in lists named queue + "\x06\x16" + step.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
QUEUES = (DEFAULT_QUEUE,)


def queue_key_names(queue: str) -> list[str]:
    return [
        queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS
    ]


def queue_depths(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> dict[str, int]:
    """Messages waiting per Celery queue (LLEN of its Redis lists)."""
    return {q: sum(int(client.llen(k)) for k in queue_key_names(q)) for q in queues}


@dataclass(frozen=True)
class PendingStudy:
    """A study still in its quiet period (receiving), from the spool."""

    study_uid: str
    last_received: datetime
    instances: int


def pending_studies(spool: Spool) -> list[PendingStudy]:
    out = []
    for study_uid, mtime in sorted(spool.pending().items(), key=lambda kv: -kv[1]):
        folder = spool.root / "incoming" / study_uid
        count = sum(1 for _ in folder.rglob("*.dcm")) if folder.is_dir() else 0
        out.append(PendingStudy(study_uid, datetime.fromtimestamp(mtime, UTC), count))
    return out


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def readiness(
    store: JobStore, client: redis.Redis | None, spool_dir: Path, min_free_mb: int
) -> list[Check]:
    """Can the service take work: Redis answers, the database answers, the spool has room."""
    checks: list[Check] = []
    if client is None:
        checks.append(Check("redis", False, "broker_url is not set"))
    else:
        try:
            client.ping()
            checks.append(Check("redis", True, "ping ok"))
        except redis.RedisError as exc:
            checks.append(Check("redis", False, f"{type(exc).__name__}: {exc}"))
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks.append(Check("database", True, store.engine.dialect.name))
    except SQLAlchemyError as exc:
        checks.append(Check("database", False, f"{type(exc).__name__}: {exc}"))
    probe = spool_dir if spool_dir.exists() else spool_dir.parent
    try:
        free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
        checks.append(
            Check("spool_disk", free_mb >= min_free_mb, f"{free_mb} MB free (need {min_free_mb})")
        )
    except OSError as exc:
        checks.append(Check("spool_disk", False, str(exc)))
    return checks


def job_dict(job: Job) -> dict[str, Any]:
    """A job as the API returns it."""
    return {
        "id": job.id,
        "state": job.state.value,
        "study_uid": job.study_uid,
        "accession_number": job.accession_number,
        "calling_ae": job.calling_ae,
        "instances": job.instance_count,
        "attempts": job.attempts,
        "error": job.error,
        "pipelines": list(job.pipelines),
        "received_at": _iso(job.received_at),
        "queued_at": _iso(job.queued_at),
        "started_at": _iso(job.started_at),
        "delivering_at": _iso(job.delivering_at),
        "finished_at": _iso(job.finished_at),
        "duration_seconds": job.duration_seconds,
        "stage_seconds": job.stage_seconds(),
        "delivery_failures": job.delivery_failures,
    }


def job_detail_dict(job: Job, steps: dict[str, float]) -> dict[str, Any]:
    """A job with its series outcomes, delivered instances and processing steps (seconds)."""
    return {
        **job_dict(job),
        "outcomes": list(job.outcomes),
        "delivered": list(job.delivered),
        "steps": steps,
    }


def worker_dict(w: WorkerStatus, now: datetime, stale_after: float) -> dict[str, Any]:
    return {
        "name": w.name,
        "device": w.device,
        "queues": list(w.queues),
        "pid": w.pid,
        "current_job": w.current_job,
        "started_at": _iso(w.started_at),
        "last_seen": _iso(w.last_seen),
        "online": w.online(now, stale_after),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class Sources:
    """Everything the monitor reads from, opened once per monitor process."""

    settings: Settings
    store: JobStore
    ops: OpsStore
    spool: Spool
    redis: redis.Redis | None
