"""Admin actions against the real job store: state checks, the audit log, a broker that is down."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from scu_scp.spool import Spool
from worker.admin.actions import ActionError, Admin, cancellable, retryable
from worker.jobs.broker import EnqueueError
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobState, JobStore


def _admin(tmp_path: Path, enqueue: object = None) -> Admin:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    queued: list[str] = []

    def record(job_id: str) -> None:
        queued.append(job_id)

    return Admin(store, OpsStore(store.engine), Spool(tmp_path / "spool"), enqueue or record)  # type: ignore[arg-type]


def _job(admin: Admin, job_id: str = "job-1") -> str:
    admin.store.create(
        job_id=job_id,
        study_uid="1.2.3",
        accession_number="ACC",
        calling_ae="PACS",
        spool_path="/nowhere",
        instance_count=1,
        received_at=datetime.now(UTC),
    )
    return job_id


def test_only_failed_or_cancelled_jobs_are_retried_and_the_retry_is_audited(
    tmp_path: Path,
) -> None:
    admin = _admin(tmp_path)
    job_id = _job(admin)
    with pytest.raises(ActionError, match="only failed or cancelled jobs can be retried"):
        admin.retry(job_id, "alice")
    admin.store.mark_failed(job_id, "boom")
    assert retryable(admin.store.get(job_id))
    assert admin.retry(job_id, "alice").state is JobState.QUEUED
    (entry,) = admin.ops.audit_entries()
    assert (entry.actor, entry.action, entry.target) == ("alice", "retry", job_id)


def test_a_retry_the_broker_cannot_take_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    def down(job_id: str) -> None:
        raise EnqueueError(f"job {job_id} not queued: broker unreachable")

    admin = _admin(tmp_path, down)
    job_id = _job(admin)
    admin.store.mark_failed(job_id, "boom")
    with pytest.raises(ActionError, match="retry could not be queued"):
        admin.retry(job_id, "alice")
    job = admin.store.get(job_id)
    assert job.state is JobState.FAILED and "broker unreachable" in (job.error or "")
    assert [e.action for e in admin.ops.audit_entries()] == ["retry-failed"]


def test_cancel_applies_before_a_job_starts(tmp_path: Path) -> None:
    admin = _admin(tmp_path)
    job_id = _job(admin)
    assert cancellable(admin.store.get(job_id))
    assert admin.cancel(job_id, "bob").state is JobState.CANCELLED
    with pytest.raises(ActionError, match="only received or queued jobs can be cancelled"):
        admin.cancel(job_id, "bob")


def test_force_complete_needs_a_valid_uid_of_a_study_still_receiving(tmp_path: Path) -> None:
    admin = _admin(tmp_path)
    with pytest.raises(ActionError, match="study UID"):
        admin.force_complete("../etc", "carol")
    with pytest.raises(ActionError, match="not waiting in the spool"):
        admin.force_complete("1.2.3", "carol")
    assert admin.ops.take_force_complete_requests() == []
