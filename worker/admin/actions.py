"""Admin actions on jobs and intake, shared by the monitor's API and pages and the CLI.

Every action is checked against the job's current state (no lost races with workers) and
recorded in the audit log with who asked and when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from scu_scp.spool import Spool, UnknownBatchError, validate_uid
from worker.jobs.broker import EnqueueError
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import Job, JobState, JobStore

log = logging.getLogger(__name__)


class ActionError(Exception):
    """The action does not apply (wrong state, unknown study); the message says why."""


@dataclass(frozen=True)
class Admin:
    """The stores, the spool and how to queue a job: all an action needs."""

    store: JobStore
    ops: OpsStore
    spool: Spool
    enqueue: Callable[[str], None]

    def retry(self, job_id: str, actor: str) -> Job:
        """Queue a failed (or cancelled) job again; its results are idempotent."""
        job = self.store.get(job_id)
        purged = inputs_purged_reason(job)
        if purged:
            raise ActionError(f"job {job_id} cannot run again: {purged}")
        if not self.store.reset_for_retry(job_id):
            purged = inputs_purged_reason(self.store.get(job_id))  # purged meanwhile
            if purged:
                raise ActionError(f"job {job_id} cannot run again: {purged}")
            raise ActionError(
                f"job {job_id} is {job.state.value}: only failed or cancelled jobs can be retried"
            )
        try:
            self.enqueue(job_id)
        except (EnqueueError, OSError, UnknownBatchError) as exc:
            # Broker down or not configured, or the received files gone from the spool: say
            # so on the job instead of leaving it queued.
            reason = f"retry could not be queued: {type(exc).__name__}: {exc}"
            self.store.mark_failed(job_id, reason)
            self.ops.audit(actor, "retry-failed", job_id, reason)
            raise ActionError(reason) from exc
        self.ops.audit(actor, "retry", job_id, f"was {job.state.value}: {job.error or ''}")
        log.info("job %s queued again by %s", job_id, actor)
        return self.store.get(job_id)

    def cancel(self, job_id: str, actor: str) -> Job:
        """Cancel a job that has not started; a worker that picks it up skips it."""
        job = self.store.get(job_id)
        if not self.store.cancel(job_id, f"cancelled by {actor}"):
            raise ActionError(
                f"job {job_id} is {job.state.value}: only received or queued jobs can be cancelled"
            )
        self.ops.audit(actor, "cancel", job_id, f"was {job.state.value}")
        log.info("job %s cancelled by %s", job_id, actor)
        return self.store.get(job_id)

    def force_complete(self, study_uid: str, actor: str) -> None:
        """Ask the SCP process to seal a study still in its quiet period now."""
        try:
            validate_uid(study_uid, "study UID")
        except ValueError as exc:
            raise ActionError(str(exc)) from exc
        if study_uid not in self.spool.pending():
            raise ActionError(f"study {study_uid} is not waiting in the spool")
        self.ops.request_force_complete(study_uid, actor)
        self.ops.audit(actor, "force-complete", study_uid)
        log.info("study %s: completion forced by %s", study_uid, actor)

    def set_intake_paused(self, paused: bool, actor: str) -> None:
        """While paused the SCP answers C-STORE with 0xA700, so the PACS keeps and retries."""
        self.ops.set_intake_paused(paused, actor)
        self.ops.audit(actor, "pause-intake" if paused else "resume-intake", "scp")
        log.info("intake %s by %s", "paused" if paused else "resumed", actor)


def inputs_purged_reason(job: Job) -> str:
    """Why a job has nothing left to run on ('' if its received instances are kept)."""
    if job.inputs_purged_at is None:
        return ""
    when = job.inputs_purged_at.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"its received instances were purged on {when} under the retention settings; "
        "send the study again from the PACS"
    )


def retryable(job: Job) -> bool:
    return job.state in (JobState.FAILED, JobState.CANCELLED) and job.inputs_purged_at is None


def cancellable(job: Job) -> bool:
    return job.state in (JobState.RECEIVED, JobState.QUEUED)
