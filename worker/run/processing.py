"""Running one job: annotate a sealed study, keep the results, deliver them, record the outcome."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
from worker.jobs.store import Job, JobStore
from worker.run.results import SavedResults, load_results, save_results
from worker.run.timings import record_timings, timed

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


def _annotate(rt: Runtime, job: Job) -> SavedResults:
    folder = rt.settings.results_dir / job.id
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
    study = rt.spool.open_sealed(job.id)
    result = annotate_study(
        rt.spool.instance_paths(study),
        rules=rt.settings.routing_rules,
        pipelines=rt.pipelines,
        software_version=__version__,
        outputs=lambda modalities, pipelines: _outputs_for(rt, job, modalities, pipelines),
        options=rt.settings.delivery.outputs_options.output_options(),
    )
    with timed(folder, "save"):
        save_results(folder, result)
    record_timings(folder, result.timings)
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
    """Run one job to a final state, or raise TransientDeliveryError for the caller to retry.

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
            with timed(rt.settings.results_dir / job.id, "deliver"):
                delivered = deliver(
                    rt.settings,
                    job.id,
                    job.calling_ae,
                    outputs,
                    outcomes,
                    send=rt.send,
                    send_web=rt.send_web,
                    kinds=saved.kinds,
                )
        except NoDestinationError as exc:
            return rt.store.mark_failed(job_id, str(exc))
        except TransientDeliveryError as exc:
            rt.store.mark_delivery_failed(job_id, str(exc))  # releases the lease for the retry
            raise
    failure = _failure_summary(outcomes)
    if failure:
        log.warning("job %s: %s", job_id, failure)
        return rt.store.mark_failed(job_id, failure, delivered=delivered)
    return rt.store.mark_done(job_id, delivered=delivered)
