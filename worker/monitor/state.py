"""What the monitor shows, read from the job DB, the spool and Redis at each request.

The SCP, the workers and the monitor are separate processes: nothing here is kept in memory
between requests, so every number is the same whichever process serves it, except the
data per kind, a walk of the spool and results trees kept for
``monitor.data_usage_cache_seconds`` (``worker.jobs.usage.UsageCache``); free space is
read fresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from scu_scp.admission import Admission, ScpLimits, free_disk_bytes
from scu_scp.security import CallerPolicy
from scu_scp.spool import Spool
from worker.config import MIB, Settings
from worker.jobs.broker import queue_depths
from worker.jobs.ops_store import OpsStore
from worker.jobs.queues import configured_queues
from worker.jobs.store import JobStore
from worker.jobs.usage import DataUsage, UsageCache

log = logging.getLogger(__name__)


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
    store: JobStore, client: redis.Redis | None, spool_dir: Path, min_free_bytes: int
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
    checks.append(spool_disk_check(spool_dir, min_free_bytes))
    return checks


def ready_min_free_bytes(settings: Settings) -> int:
    """Free spool space /readyz needs: the SCP's own threshold, so /readyz fails whenever the
    SCP refuses for disk; ``monitor.min_free_disk_mb`` only raises it, to warn earlier."""
    return max(settings.scp.min_free_disk_bytes, settings.monitor.min_free_disk_bytes)


def spool_disk_check(spool_dir: Path, min_free_bytes: int) -> Check:
    """The SCP's admission check (``Admission.disk_too_full``) on the spool's file system."""
    probe = spool_dir if spool_dir.exists() else spool_dir.parent
    admission = Admission(CallerPolicy.of(()), probe, ScpLimits(min_free_disk_bytes=min_free_bytes))
    try:
        free = free_disk_bytes(probe)
    except OSError as exc:
        return Check("spool_disk", False, str(exc))
    detail = f"{free // MIB} MB free (need {min_free_bytes // MIB})"
    return Check("spool_disk", admission.disk_too_full() is None, detail)


@dataclass(frozen=True)
class Sources:
    """Everything the monitor reads from, opened once per monitor process."""

    settings: Settings
    store: JobStore
    ops: OpsStore
    spool: Spool
    redis: redis.Redis | None
    usage: UsageCache = field(default_factory=lambda: UsageCache(0))


def monitored_queues(sources: Sources) -> tuple[str, ...]:
    """Every queue a job may wait in: those this configuration names (the default, the
    pipelines' ``queue`` and ``oom_fallback_queue``, ``worker.queues``) and those a worker
    announces in its heartbeat (a worker on another machine may have its own settings)."""
    settings = sources.settings
    queues = dict.fromkeys((*configured_queues(settings), *settings.worker.queues))
    for w in sources.ops.workers(seen_within=settings.monitor.worker_stale_seconds):
        queues.update(dict.fromkeys(w.queues))
    return tuple(queues)


def queue_depth(sources: Sources) -> dict[str, int]:
    """Messages waiting in every monitored queue; {} without a broker or when it is down."""
    if sources.redis is None:
        return {}
    try:
        return queue_depths(sources.redis, monitored_queues(sources))
    except redis.RedisError as exc:
        log.warning("cannot read queue depth: %s", exc)
        return {}


def disk_pressure_check(settings: Settings, usage: DataUsage, free: int) -> Check:
    """Whether the purge can keep the spool above ``retention.pressure_free_bytes``.

    Failing only when free space is below that threshold and nothing purgeable is left:
    then the SCP will refuse soon, and the detail says what holds the disk.
    """
    threshold = settings.retention.effective_pressure_free_bytes(settings.scp.min_free_disk_bytes)
    if not threshold:
        return Check("disk_pressure", True, "off (retention.pressure_free_bytes is 0)")
    held = ", ".join(f"{kind} {size // MIB} MB" for kind, size in usage.held_bytes.items())
    if free >= threshold:
        return Check(
            "disk_pressure",
            True,
            f"{free // MIB} MB free (purge frees delivered data below {threshold // MIB} MB)",
        )
    freeable = usage.freeable_bytes
    detail = (
        f"{free // MIB} MB free, below {threshold // MIB} MB: the purge can free "
        f"{freeable // MIB} MB of delivered data; cannot free: {held}"
    )
    return Check("disk_pressure", freeable > 0, detail)


def storage(src: Sources) -> tuple[DataUsage, Check]:
    """Data per kind on this node (the cached walk) and the disk-pressure check (free space
    read now)."""
    usage = src.usage.get(src.store, src.spool, src.settings.results_dir)
    try:
        free = free_disk_bytes(src.spool.root)
    except OSError as exc:
        return usage, Check("disk_pressure", False, str(exc))
    return usage, disk_pressure_check(src.settings, usage, free)
