"""Jobs driven through their states on a hand-moved clock, as workers on many queues would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.jobs import create_job
from worker.jobs.store import JobStore

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Clock:
    """Stands in for ``utc_now`` in the store modules (monkeypatched by the test)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def run_job(
    store: JobStore,
    clock: Clock,
    job_id: str,
    *,
    queue: str,
    worker: str,
    pipelines: list[str],
    at: datetime,
    wait: float,
    processing: float,
    delivery: float = 1.0,
    failed: bool = False,
) -> None:
    """A job from queued to done (or failed), taken by ``worker`` from ``queue``, the clock
    moved between steps: ``wait`` s in the queue, ``processing`` s, ``delivery`` s."""
    create_job(store, job_id, received_at=at)
    clock.now = at
    store.mark_queued(job_id)
    assert store.note_pickup(job_id, worker=worker, queue=queue)
    clock.now = at + timedelta(seconds=wait)
    assert store.claim(job_id, lease_seconds=60) is not None
    clock.now += timedelta(seconds=processing)
    store.mark_delivering(job_id, pipelines=pipelines, outcomes=[])
    clock.now += timedelta(seconds=delivery)
    if failed:
        store.mark_failed(job_id, "delivery refused")
    else:
        store.mark_done(job_id, delivered=[])
