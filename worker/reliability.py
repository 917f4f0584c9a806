"""Keeping jobs alive across crashes: worker leases and re-queueing what the broker lost.

Two mechanisms, one rule (the job store is the truth, the broker only a delivery channel):

- A worker holds a *lease* on the job it runs: ``JobStore.claim`` takes it atomically and
  a ``Heartbeat`` thread refreshes it. A second copy of the message (Redis redelivery after
  ``visibility_timeout``, or a re-queue below) finds the lease alive and does nothing; once
  the worker is dead the lease goes stale and the next copy takes the job over.
- ``reconcile`` runs in the dispatcher: a non-final job with no message in Redis (neither
  waiting in the queue nor held unacknowledged by a worker) whose row has not moved for a
  while is queued again. That covers Redis restarted without its data (FLUSHALL, no AOF).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from worker.celery_app import DEFAULT_QUEUE
from worker.jobs import JobState, JobStore
from worker.settings import Settings

log = logging.getLogger(__name__)

# kombu's Redis transport: a queue is a list per priority step, and messages delivered but not
# yet acknowledged live in the "unacked" hash until acked or restored.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED_KEY = "unacked"
_ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING)


class Heartbeat:
    """Refreshes a job's lease every ``lease_seconds / 4`` while the job runs."""

    def __init__(self, store: JobStore, job_id: str, lease_seconds: float) -> None:
        self._store = store
        self._job_id = job_id
        self._interval = lease_seconds / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._store.touch(self._job_id)
            except SQLAlchemyError as exc:  # a missed beat must not kill the job
                log.warning("job %s: could not refresh its lease: %s", self._job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def _job_id_of(raw: bytes | str) -> str | None:
    """The job id carried by one serialized kombu message, None if it is not ours."""
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(args, list) and args and isinstance(args[0], str):
        return args[0]
    return None


def broker_job_ids(client: redis.Redis, queue: str) -> set[str]:
    """Ids of the jobs that have a message in Redis: waiting in ``queue`` or unacknowledged."""
    raw: list[Any] = []
    for step in _PRIORITY_STEPS:
        key = queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}"
        raw += client.lrange(key, 0, -1)
    raw += client.hvals(_UNACKED_KEY)
    return {job_id for job_id in map(_job_id_of, raw) if job_id is not None}


def reconcile(
    store: JobStore,
    enqueue: Callable[[str], None],
    in_broker: Iterable[str],
    *,
    requeue_after_seconds: float,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[str]:
    """Queue again every non-final job the broker has no message for; returns their ids.

    A queued job qualifies once its row is ``requeue_after_seconds`` old (a message may be
    between the queue and a worker for a moment); a running one once its lease is stale.
    Duplicates are harmless: ``JobStore.claim`` lets only one worker run a job.
    """
    now = now or datetime.now(UTC)
    present = set(in_broker)
    requeued: list[str] = []
    for job in store.list(states=_ACTIVE_STATES, limit=100_000):
        if job.id in present or job.updated_at is None:
            continue
        age = now - job.updated_at
        limit = requeue_after_seconds if job.state is JobState.QUEUED else lease_seconds
        if age < timedelta(seconds=limit):
            continue
        enqueue(job.id)
        if job.state is JobState.QUEUED:
            store.touch(job.id)  # wait another period before the next attempt
        log.warning(
            "job %s was %s with no message in the broker for %.0f s: queued again",
            job.id,
            job.state.value,
            age.total_seconds(),
        )
        requeued.append(job.id)
    return requeued


def requeue_lost_jobs(settings: Settings, store: JobStore, enqueue: Callable[[str], None]) -> int:
    """One reconciliation pass against the configured Redis broker (the dispatcher's loop)."""
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=10)
    try:
        present = broker_job_ids(client, DEFAULT_QUEUE)
    finally:
        client.close()
    requeued = reconcile(
        store,
        enqueue,
        present,
        requeue_after_seconds=settings.recovery.requeue_after_seconds,
        lease_seconds=settings.worker.lease_seconds,
    )
    return len(requeued)
