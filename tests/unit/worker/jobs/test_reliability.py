"""Leases and re-queueing: a job runs on one worker at a time and survives a broker that forgot it.

The job store runs on a real SQLite file and, where one answers, the real PostgreSQL; the
broker is a real redis-server holding real Celery messages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from pipelines.registry import builtin_pipelines
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, make_settings, sealed_study, spool_study
from tests.support.phantom import make_ct_phantom
from tests.support.processes import require_binaries
from worker.config import DEFAULT_QUEUE, SettingsError, load_settings
from worker.jobs.broker import BrokerView, broker_job_ids
from worker.jobs.dispatch import Dispatcher
from worker.jobs.reliability import LeaseRefresher, reconcile
from worker.jobs.store import JobState, JobStore
from worker.run.celery_app import create_app, enqueue_job
from worker.run.processing import Runtime, process_job
from worker.service.embedded_redis import EmbeddedRedis


def _job(store: JobStore, job_id: str, *, queued: bool = True) -> str:
    store.create(
        job_id=job_id,
        study_uid="1.2.3",
        accession_number="ACC",
        calling_ae="ORTHANC",
        spool_path="/tmp/x",
        instance_count=1,
        received_at=datetime.now(UTC),
    )
    if queued:
        store.mark_queued(job_id)
    return job_id


def test_claim_lets_one_worker_hold_a_job_until_its_lease_goes_stale(store: JobStore) -> None:
    job_id = _job(store, "j1")
    first = store.claim(job_id, lease_seconds=3600)
    assert first is not None and first.state is JobState.RUNNING and first.attempts == 1
    # A second copy of the message while the lease is fresh: refused.
    assert store.claim(job_id, lease_seconds=3600) is None
    assert store.get(job_id).attempts == 1
    # The holder died: with a lease shorter than the row's age, the next copy takes over.
    second = store.claim(job_id, lease_seconds=0)
    assert second is not None and second.attempts == 2


def test_finished_jobs_cannot_be_claimed(store: JobStore) -> None:
    done = _job(store, "done")
    store.mark_done(done, delivered=[])
    failed = _job(store, "failed")
    store.mark_failed(failed, "bad input")
    for job_id in (done, failed):
        assert store.claim(job_id, lease_seconds=0) is None
        store.touch(job_id)
    assert store.get(done).state is JobState.DONE
    assert store.get(failed).state is JobState.FAILED


def test_heartbeat_keeps_the_lease_fresh(store: JobStore) -> None:
    job_id = _job(store, "beat")
    claimed = store.claim(job_id, lease_seconds=60)
    assert claimed is not None and claimed.updated_at is not None
    with LeaseRefresher(store, job_id, lease_seconds=0.2):
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while True:
            updated = store.get(job_id).updated_at
            assert updated is not None
            if updated > claimed.updated_at:
                break
            assert datetime.now(UTC) < deadline, "the heartbeat never refreshed the lease"
    assert store.claim(job_id, lease_seconds=60) is None


def test_reconcile_requeues_queued_jobs_the_broker_lost(store: JobStore) -> None:
    waiting = _job(store, "waiting")
    held = _job(store, "held")  # a worker holds it unacknowledged (e.g. a retry countdown)
    lost = _job(store, "lost")
    done = _job(store, "done")
    store.mark_done(done, delivered=[])
    received = _job(store, "received", queued=False)  # the spool recovery owns these
    broker = BrokerView(waiting=frozenset({waiting}), unacked=frozenset({held}))
    sent: list[str] = []

    def run(after: float) -> list[str]:
        now = datetime.now(UTC) + timedelta(seconds=after)
        return reconcile(
            store, sent.append, broker, requeue_after_seconds=120, lease_seconds=60, now=now
        )

    # Young rows are left alone: a message may be on its way to a worker.
    assert run(30) == [] and sent == []
    assert run(300) == [lost] and sent == [lost]
    # Re-queued rows are touched: not queued again at the next pass.
    assert run(60) == []
    assert received not in sent and done not in sent


def test_reconcile_requeues_running_jobs_whose_lease_went_stale(store: JobStore) -> None:
    dead = _job(store, "dead")  # its message is still unacknowledged in Redis
    store.claim(dead, lease_seconds=60)
    copy_waiting = _job(store, "copy-waiting")  # dead too, but a copy already waits
    store.claim(copy_waiting, lease_seconds=60)
    broker = BrokerView(waiting=frozenset({copy_waiting}), unacked=frozenset({dead}))
    sent: list[str] = []

    def run(after: float) -> list[str]:
        now = datetime.now(UTC) + timedelta(seconds=after)
        return reconcile(
            store, sent.append, broker, requeue_after_seconds=1, lease_seconds=60, now=now
        )

    assert run(10) == [], "a fresh lease: its worker is alive"
    assert run(120) == [dead] and sent == [dead]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    require_binaries("redis-server")
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server.url


def test_broker_job_ids_sees_queued_and_unacked_messages_and_forgets_on_flush(
    broker: str, tmp_path: Path
) -> None:
    settings = load_settings(None, data_dir=tmp_path, broker_url=broker)
    app = create_app(settings)
    client = redis.Redis.from_url(broker)
    try:
        enqueue_job(app, "job-a")
        enqueue_job(app, "job-b")
        view = broker_job_ids(client, [DEFAULT_QUEUE])
        assert view == BrokerView(frozenset({"job-a", "job-b"}), frozenset())
        # A worker took one and has not acknowledged it: still the broker's.
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue(DEFAULT_QUEUE)
            message = queue.get(timeout=10)
            assert client.hlen("unacked") == 1
            view = broker_job_ids(client, [DEFAULT_QUEUE])
            assert view == BrokerView(frozenset({"job-b"}), frozenset({"job-a"}))
            client.flushall()
            assert broker_job_ids(client, [DEFAULT_QUEUE]) == BrokerView(frozenset(), frozenset())
            message.ack()
            queue.close()
    finally:
        client.close()


def test_visibility_timeout_must_exceed_the_lease(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"worker\.visibility_timeout_seconds must exceed"):
        load_settings(None, data_dir=tmp_path, worker={"visibility_timeout_seconds": 30})
    ok = load_settings(
        None, data_dir=tmp_path, worker={"visibility_timeout_seconds": 30, "lease_seconds": 5}
    )
    assert ok.worker.effective_visibility_timeout == 30
    default = load_settings(None, data_dir=tmp_path, worker={"job_time_limit_seconds": 100})
    assert default.worker.effective_visibility_timeout == 800


def test_dispatch_and_recovery_at_once_queue_a_study_once(tmp_path: Path) -> None:
    """The SCP's completion thread and the recovery loop racing for one sealed study."""
    spool = Spool(tmp_path / "spool")
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    study = sealed_study(spool)
    inside, release = threading.Event(), threading.Event()
    sent: list[str] = []

    def slow_enqueue(job_id: str) -> None:
        sent.append(job_id)
        inside.set()
        release.wait(30)

    dispatcher = Dispatcher(store, spool, slow_enqueue)
    first = threading.Thread(target=dispatcher.dispatch, args=(study,))
    first.start()
    assert inside.wait(30)
    # The study's job is "received" and its first message is being sent: recovery now.
    second = threading.Thread(target=dispatcher.recover)
    second.start()
    second.join(0.5)  # without the dispatcher's lock it would send a second message here
    release.set()
    first.join(30)
    second.join(30)
    assert sent == [study.batch_id]
    assert store.get(study.batch_id).state is JobState.QUEUED
    store.close()


def test_process_job_leaves_a_job_held_by_a_live_worker_alone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    pacs = FakePacs()
    rt = Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines=dict(builtin_pipelines()),
        send=pacs,
    )
    job_id = spool_study(rt, make_ct_phantom(slices=8, size=64, pixel_spacing=5.5).datasets)
    assert rt.store.claim(job_id, lease_seconds=60) is not None  # another worker runs it
    job = process_job(rt, job_id)
    assert job.state is JobState.RUNNING and job.attempts == 1
    assert pacs.received == [], "a duplicate message must not run or deliver the job"
    rt.store.close()
