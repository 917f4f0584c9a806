"""The job store against a real SQLite file and, where one answers, the real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.support.jobs import postgres_url
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobState, JobStore, UnknownJobError

LEASE = 60.0  # seconds a claim holds a job (worker.lease_seconds)


def _create(store: JobStore, job_id: str = "20261125T000000Z-aaaa", study: str = "1.2.3") -> None:
    store.create(
        job_id=job_id,
        study_uid=study,
        accession_number="ACC1",
        calling_ae="ORTHANC",
        spool_path="/tmp/x",
        instance_count=3,
        received_at=datetime(2026, 11, 25, tzinfo=UTC),
    )


def test_lifecycle_records_states_times_and_results(store: JobStore) -> None:
    _create(store)
    job = store.get("20261125T000000Z-aaaa")
    assert job.state is JobState.RECEIVED and job.attempts == 0
    assert store.mark_queued(job.id).queued_at is not None
    running = store.claim(job.id, lease_seconds=LEASE)
    assert running is not None
    assert running.state is JobState.RUNNING and running.attempts == 1 and running.started_at
    outcomes = [{"series_uid": "1.2.3.4", "status": "done", "outputs": ["9.9"]}]
    store.mark_delivering(job.id, pipelines=["ct-basic"], outcomes=outcomes)
    done = store.mark_done(job.id, delivered=[{"destination": "pacs", "sop_instance_uid": "9.9"}])
    assert done.state is JobState.DONE and done.finished_at is not None
    assert done.pipelines == ("ct-basic",) and done.outcomes == tuple(outcomes)
    assert done.delivered[0]["sop_instance_uid"] == "9.9"
    assert done.received_at == datetime(2026, 11, 25, tzinfo=UTC)


def test_create_is_idempotent(store: JobStore) -> None:
    _create(store)
    store.mark_queued("20261125T000000Z-aaaa")
    _create(store)
    assert store.get("20261125T000000Z-aaaa").state is JobState.QUEUED
    assert len(store.list()) == 1


def test_failure_keeps_reason_and_retry_counts_attempts(store: JobStore) -> None:
    _create(store)
    store.claim("20261125T000000Z-aaaa", lease_seconds=LEASE)
    store.mark_retrying("20261125T000000Z-aaaa", "destination pacs: connection refused")
    assert store.get("20261125T000000Z-aaaa").error == "destination pacs: connection refused"
    store.claim("20261125T000000Z-aaaa", lease_seconds=LEASE)
    failed = store.mark_failed("20261125T000000Z-aaaa", "gave up")
    assert failed.state is JobState.FAILED and failed.error == "gave up" and failed.attempts == 2


def test_list_filters_by_state_and_study(store: JobStore) -> None:
    _create(store, "a", "1.1")
    _create(store, "b", "1.2")
    store.mark_failed("b", "x")
    assert [j.id for j in store.list(states=[JobState.FAILED])] == ["b"]
    assert [j.id for j in store.list(study_uid="1.1")] == ["a"]
    with pytest.raises(UnknownJobError):
        store.get("nope")
    assert store.find("nope") is None


# -- monitoring additions: cancel/retry, counts, search, stage timings, migrations ----------


def test_cancel_only_before_start_and_retry_only_after_failure(store: JobStore) -> None:
    _create(store, "a")
    store.mark_queued("a")
    assert store.cancel("a", "cancelled by admin")
    cancelled = store.get("a")
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert not store.cancel("a", "again")  # already final
    assert store.reset_for_retry("a")
    again = store.get("a")
    assert again.state is JobState.QUEUED and again.error is None and again.finished_at is None
    store.claim("a", lease_seconds=LEASE)
    assert not store.cancel("a", "too late")
    assert not store.reset_for_retry("a")  # running, not failed
    store.mark_failed("a", "boom")
    assert store.reset_for_retry("a")
    with pytest.raises(UnknownJobError):
        store.cancel("nope", "x")


def test_counts_totals_and_search(store: JobStore) -> None:
    _create(store, "j1", "1.2.3.1")
    _create(store, "j2", "1.2.3.2")
    store.create(
        job_id="j3",
        study_uid="9.9",
        accession_number="ACC_50%",
        calling_ae="X",
        spool_path="/tmp/y",
        instance_count=5,
        received_at=datetime(2026, 11, 25, tzinfo=UTC),
    )
    store.mark_delivery_failed("j2", "destination down")
    store.mark_failed("j2", "x")
    counts = store.counts()
    assert counts[JobState.RECEIVED] == 2 and counts[JobState.FAILED] == 1
    assert counts[JobState.DONE] == 0 and set(counts) == set(JobState)
    assert store.totals() == (3 + 3 + 5, 1)
    assert {j.id for j in store.list(search="1.2.3.")} == {"j1", "j2"}
    assert [j.id for j in store.list(search="50%")] == ["j3"]
    assert store.list(search="ACC1_") == []  # "_" is literal, not a wildcard
    assert [j.id for j in store.list(search="j3")] == ["j3"]
    assert len(store.list(limit=2)) == 2 and len(store.list(limit=2, offset=2)) == 1


def test_stage_timings_and_delivery_failures(store: JobStore) -> None:
    _create(store)
    job_id = "20261125T000000Z-aaaa"
    store.mark_queued(job_id)
    store.claim(job_id, lease_seconds=LEASE)
    store.mark_delivering(job_id, pipelines=["ct-basic"], outcomes=[])
    store.mark_delivery_failed(job_id, "destination down")
    store.claim(job_id, lease_seconds=LEASE)
    store.mark_delivering(job_id, pipelines=["ct-basic"], outcomes=[])
    done = store.mark_done(job_id, delivered=[])
    assert done.delivery_failures == 1
    stages = done.stage_seconds()
    assert set(stages) == {"queue_wait", "processing", "delivery"}
    assert all(v >= 0 for v in stages.values())
    assert done.duration_seconds is not None and done.duration_seconds > 0
    assert [j.id for j in store.finished()] == [job_id]


def _legacy_database(url: str) -> None:
    """A database as the store made it before migrations: the jobs table, no alembic_version."""
    from worker.jobs.migrations import upgrade_schema
    from worker.jobs.store import make_engine

    engine = make_engine(url)
    upgrade_schema(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(
            text(
                "INSERT INTO jobs (id, study_uid, accession_number, calling_ae, spool_path, "
                "instance_count, state, attempts, error, pipelines, outcomes, delivered, "
                "received_at, updated_at) VALUES ('old-job', '1.2.9', 'ACC9', 'PACS', '/x', 7, "
                "'done', 1, NULL, '[\"ct-basic\"]', '[]', '[]', :t, :t)"
            ),
            {"t": datetime(2026, 1, 2, tzinfo=UTC)},
        )
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'legacy.sqlite3'}"
    else:
        yield from postgres_url()


def test_existing_database_is_upgraded_keeping_its_rows(empty_url: str) -> None:
    from worker.jobs.migrations import current_revision, head_revision

    _legacy_database(empty_url)
    store = JobStore(empty_url)
    try:
        assert current_revision(store.engine) == head_revision()
        old = store.get("old-job")
        assert old.state is JobState.DONE and old.instance_count == 7
        assert old.pipelines == ("ct-basic",) and old.delivery_failures == 0
        assert old.received_at == datetime(2026, 1, 2, tzinfo=UTC)
        store.mark_delivery_failed("old-job", "x")  # the new column works
        assert store.get("old-job").delivery_failures == 1
    finally:
        store.close()
    # Opening again is a no-op at head.
    JobStore(empty_url).close()


def test_fresh_sqlite_store_is_migrated_once_by_concurrent_openers(tmp_path: Path) -> None:
    import threading

    from worker.jobs.migrations import current_revision, head_revision

    url = f"sqlite:///{tmp_path / 'race.sqlite3'}"
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            JobStore(url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    store = JobStore(url)
    assert current_revision(store.engine) == head_revision()
    store.close()


def test_ops_store_audit_heartbeats_and_controls(store: JobStore) -> None:
    ops = OpsStore(store.engine)
    ops.audit("admin", "retry", "job-1", "was failed")
    ops.audit("cli:root", "cancel", "job-2")
    entries = ops.audit_entries()
    assert [(e.actor, e.action, e.target) for e in entries] == [
        ("cli:root", "cancel", "job-2"),
        ("admin", "retry", "job-1"),
    ]
    assert entries[0].at.tzinfo is not None

    started = datetime.now(UTC)
    ops.heartbeat(
        "host/1", device="cpu", queues=("q",), pid=1, current_job=None, started_at=started
    )
    ops.heartbeat(
        "host/1", device="cpu", queues=("q",), pid=1, current_job="job-1", started_at=started
    )
    (worker,) = ops.workers(seen_within=60)
    assert worker.current_job == "job-1" and worker.queues == ("q",) and worker.device == "cpu"
    assert worker.online(datetime.now(UTC), 60)
    ops.forget_worker("host/1")
    assert ops.workers() == []

    assert not ops.intake_paused()
    ops.set_intake_paused(True, "admin")
    assert ops.intake_paused()
    ops.set_intake_paused(False, "admin")
    assert not ops.intake_paused()

    ops.request_force_complete("1.2.3", "admin")
    ops.request_force_complete("1.2.4", "admin")
    assert ops.take_force_complete_requests() == ["1.2.3", "1.2.4"]
    assert ops.take_force_complete_requests() == []  # each handed out once


def test_migrations_build_exactly_the_models(store: JobStore) -> None:
    """A model changed without a migration (or the reverse) shows up here."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from worker.jobs.store import _Base

    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), _Base.metadata)
    assert diffs == []


def test_a_job_cancelled_before_its_worker_starts_it_stays_cancelled(store: JobStore) -> None:
    _create(store)
    job_id = "20261125T000000Z-aaaa"
    store.mark_queued(job_id)
    store.cancel(job_id, "cancelled by admin")
    assert store.claim(job_id, lease_seconds=LEASE) is None
    late = store.get(job_id)
    assert late.state is JobState.CANCELLED and late.attempts == 0 and late.started_at is None
