"""Keeping jobs alive across crashes: worker leases and re-queueing what the broker lost.

Two mechanisms, one rule (the job store is the truth, the broker only a delivery channel):

- A worker holds a *lease* on the job it runs: ``JobStore.claim`` takes it atomically and
  a ``LeaseRefresher`` thread renews it. A second copy of the message (Redis redelivery after
  ``visibility_timeout``, or a re-queue below) finds the lease alive and does nothing; once
  the worker is dead the lease goes stale and the next copy takes the job over.
- ``reconcile`` runs in the dispatcher: a queued job with no message in Redis (neither
  waiting in the queue nor held unacknowledged by a worker) whose row has not moved for a
  while is queued again, which covers Redis restarted without its data (FLUSHALL, no AOF);
  so is a running job whose lease went stale (its worker died) with no copy waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import TracebackType

import redis
from sqlalchemy.exc import SQLAlchemyError

from worker.config import Settings
from worker.jobs.broker import BrokerView, broker_job_ids
from worker.jobs.queues import configured_queues
from worker.jobs.store import JobState, JobStore, utc_now

log = logging.getLogger(__name__)

_ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING)


class LeaseRefresher:
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

    def __enter__(self) -> LeaseRefresher:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def reconcile(
    store: JobStore,
    enqueue: Callable[[str], None],
    broker: BrokerView,
    *,
    requeue_after_seconds: float,
    lease_seconds: float,
    now: datetime | None = None,
) -> list[str]:
    """Queue again every non-final job that no live worker and no message will pick up.

    - queued, with no message in Redis at all, its row ``requeue_after_seconds`` old (a
      message may be between the queue and a worker for a moment): Redis lost it;
    - running or delivering with a lease older than ``lease_seconds``, and no copy waiting
      in the queue: its worker died. Its unacknowledged message would come back only after
      the visibility timeout (hours by default); this brings the job back after the lease.

    Returns the ids queued. Duplicates are harmless: ``JobStore.claim`` lets one worker run
    a job, and a finished job ignores further copies.
    """
    now = now or utc_now()
    requeued: list[str] = []
    for job in store.list(states=_ACTIVE_STATES, limit=100_000):
        if job.updated_at is None or job.id in broker.waiting:
            continue
        age = now - job.updated_at
        if job.state is JobState.QUEUED:
            if job.id in broker.unacked or age < timedelta(seconds=requeue_after_seconds):
                continue
            why = "queued with no message in the broker"
        else:
            if age < timedelta(seconds=lease_seconds):
                continue
            why = f"{job.state.value} with a stale lease (its worker is gone)"
        enqueue(job.id)
        if job.state is JobState.QUEUED:
            store.touch(job.id)  # wait another period before the next attempt
        log.warning("job %s was %s for %.0f s: queued again", job.id, why, age.total_seconds())
        requeued.append(job.id)
    return requeued


def requeue_lost_jobs(settings: Settings, store: JobStore, enqueue: Callable[[str], None]) -> int:
    """One reconciliation pass against the configured Redis broker (the dispatcher's loop)."""
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=10)
    try:
        present = broker_job_ids(client, configured_queues(settings))
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
