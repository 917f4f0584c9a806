"""Running one job: annotate a sealed study, keep the results, deliver them, record the outcome."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pipelines.base import Pipeline
from pipelines.errors import InputError
from pipelines.runner import annotate_study
from scu_scp.dicomweb import store_datasets
from scu_scp.spool import Spool
from worker import __version__
from worker.config import Settings
from worker.delivery.deliver import TransientDeliveryError, deliver, delivery_facts
from worker.delivery.destinations import NoDestinationError, needed_outputs
from worker.delivery.senders import Sender, WebSender
from worker.jobs.ops_store import OpsStore
from worker.jobs.retention import Purger
from worker.jobs.store import Job, JobStore
from worker.run.results import SavedResults, load_results, save_results
from worker.run.timings import read_timings, record_timings, timed
from worker.run.transfer import CentralClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What a worker process needs to run jobs, built once per process."""

    settings: Settings
    store: JobStore
    spool: Spool
    pipelines: dict[str, Pipeline]
    send: Sender
    send_web: WebSender = store_datasets
    # Set on a remote worker (worker.central_url): the study comes from, and the results go
    # to, the central node; this machine's copies are removed when the job ends.
    central: CentralClient | None = None


def results_folder(rt: Runtime, job_id: str) -> Path:
    """Where this worker keeps a job's results: the central ``data_dir/results/<job>``, or on
    a remote worker its own copy under ``data_dir/remote/`` (never the central folder, even
    if a remote worker were given the central data_dir)."""
    if rt.central is not None:
        return rt.central.results_dir / job_id
    return rt.settings.results_dir / job_id


def _annotate(rt: Runtime, job: Job) -> SavedResults:
    folder = results_folder(rt, job.id)
    if rt.central is not None:
        rt.central.fetch_results(job.id, folder)
    saved = load_results(folder)
    if saved is not None:
        missing = set(_outputs_for(rt, job, *delivery_facts(saved.outcomes))) - set(saved.built)
        if not missing:
            log.info("job %s: reusing results computed by an earlier attempt", job.id)
            return saved
        log.info(
            "job %s: computing again, the destinations now also want %s",
            job.id,
            ", ".join(sorted(missing)),
        )
    if rt.central is not None:
        with timed(folder, "fetch"):
            paths = rt.central.fetch_study(job.id)
    else:
        paths = rt.spool.instance_paths(rt.spool.open_sealed(job.id))
    result = annotate_study(
        paths,
        rules=rt.settings.routing_rules,
        pipelines=rt.pipelines,
        software_version=__version__,
        outputs=lambda modalities, pipelines: _outputs_for(rt, job, modalities, pipelines),
        options=rt.settings.delivery.outputs_options.output_options(),
    )
    with timed(folder, "save"):
        save_results(folder, result)
    record_timings(folder, result.timings)
    if rt.central is not None and not rt.central.commit_results(job.id, folder):
        # Another attempt committed first: deliver its results, as a retry would.
        rt.central.fetch_results(job.id, folder)
    # Deliver the saved files, not the objects just built: the first attempt sends the same
    # bytes as a retry would, and a dataset read from its file is sent as read (pydicom
    # writes its raw elements back) instead of encoded a second time.
    saved = load_results(folder)
    if saved is None:
        raise RuntimeError(f"job {job.id}: results saved in {folder} but not readable")
    return saved


def _outputs_for(
    rt: Runtime, job: Job, modalities: Sequence[str], pipelines: Sequence[str]
) -> tuple[str, ...]:
    """The output kinds the job's destinations receive, together: what the job builds."""
    return needed_outputs(rt.settings, job.calling_ae, modalities=modalities, pipelines=pipelines)


def _failure_summary(outcomes: Sequence[dict[str, Any]]) -> str | None:
    """One line per failed series; a reason shared by several pipelines is said once."""
    reasons: dict[str, list[str]] = {}
    for o in outcomes:
        if o["status"] != "failed":
            continue
        prefix = f"series {o['series_uid']}"
        reason = str(o["reason"])
        line = reason if reason.startswith(prefix) else f"{prefix}: {reason}"
        lines = reasons.setdefault(o["series_uid"], [])
        if line not in lines:
            lines.append(line)
    if not reasons:
        return None
    parts = [line for lines in reasons.values() for line in lines]
    return f"{len(reasons)} series failed: " + "; ".join(parts)


def process_job(rt: Runtime, job_id: str) -> Job:
    """Run one job to a final state, or raise TransientDeliveryError (or, on a remote
    worker, TransferError) for the caller to retry.

    Idempotent: outputs have UIDs derived from their inputs, so running a job again sends
    the same instances and the PACS keeps one copy.
    """
    claimed = rt.store.claim(job_id, lease_seconds=rt.settings.worker.lease_seconds)
    if claimed is None:
        # Done, failed, or running on a live worker: this message is a harmless duplicate.
        job = rt.store.get(job_id)
        log.info("job %s is %s (finished or held by a live worker): skipped", job_id, job.state)
        return job
    job = claimed
    log.info("job %s: study %s, accession %s", job.id, job.study_uid, job.accession_number)
    if rt.central is None:
        return _run(rt, job)
    rt.central.discard(job.id)  # a killed attempt's copies: the central node's are the truth
    try:
        return _run(rt, job)
    finally:
        rt.central.discard(job.id)


def _run(rt: Runtime, job: Job) -> Job:
    job_id = job.id
    try:
        saved = _annotate(rt, job)
    except InputError as exc:
        log.warning("job %s failed: %s", job_id, exc)
        return rt.store.mark_failed(job_id, str(exc))
    outputs, outcomes = saved.outputs, saved.outcomes
    pipelines = sorted({o["pipeline"] for o in outcomes if o["pipeline"]})
    rt.store.mark_delivering(job_id, pipelines=pipelines, outcomes=outcomes)
    delivered: list[dict[str, Any]] = []
    if outputs:
        try:
            delivered = _deliver(rt, job, saved)
        except NoDestinationError as exc:
            return rt.store.mark_failed(job_id, str(exc))
        except TransientDeliveryError as exc:
            rt.store.mark_delivery_failed(job_id, str(exc))  # releases the lease for the retry
            raise
    failure = _failure_summary(outcomes)
    if failure:
        log.warning("job %s: %s", job_id, failure)
        return rt.store.mark_failed(job_id, failure, delivered=delivered)
    done = rt.store.mark_done(job_id, delivered=delivered)
    if rt.central is None:  # a remote worker's spool is not where the study lives
        _release_under_disk_pressure(rt, done)
    return done


def _release_under_disk_pressure(rt: Runtime, job: Job) -> None:
    """A delivered job's received images go at once while the spool disk is short of space
    (``retention.pressure_free_bytes``), so a backlog of queued studies never waits for the
    SCP process's purge to find the room (see README "Disk pressure")."""
    purger = Purger(rt.settings, rt.store, OpsStore(rt.store.engine), rt.spool)
    try:
        purger.release_delivered_inputs(job)
    except (OSError, SQLAlchemyError) as exc:  # the job is done; the SCP's purge tries again
        log.warning("job %s: could not free its inputs under disk pressure: %s", job.id, exc)


def _deliver(rt: Runtime, job: Job, saved: SavedResults) -> list[dict[str, Any]]:
    folder = results_folder(rt, job.id)
    try:
        with timed(folder, "deliver"):
            return deliver(
                rt.settings,
                job.id,
                job.calling_ae,
                saved.outputs,
                saved.outcomes,
                send=rt.send,
                send_web=rt.send_web,
                kinds=saved.kinds,
            )
    finally:
        if rt.central is not None:  # the monitor shows the central node's copy
            rt.central.push_timings(job.id, read_timings(folder))
