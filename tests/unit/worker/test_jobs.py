"""The job store against a real SQLite file and, where one answers, the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from worker.jobs import JobState, JobStore, UnknownJobError

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _postgres_url() -> Iterator[str]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    name = f"pa_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.skip(f"no PostgreSQL answers on 127.0.0.1:5432: {exc.orig}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        s = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
        yield s
        s.close()
    else:
        gen = _postgres_url()
        url = next(gen)
        s = JobStore(url)
        yield s
        s.close()
        next(gen, None)


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
    running = store.mark_running(job.id)
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
    store.mark_running("20261125T000000Z-aaaa")
    store.mark_retrying("20261125T000000Z-aaaa", "destination pacs: connection refused")
    assert store.get("20261125T000000Z-aaaa").error == "destination pacs: connection refused"
    store.mark_running("20261125T000000Z-aaaa")
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
