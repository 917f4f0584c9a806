"""Running one job: annotate a sealed study, keep the results, deliver them, record the outcome."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from pipelines.base import Pipeline
from pipelines.errors import InputError
from pipelines.runner import StudyResult, annotate_study
from scu_scp.dicomweb import DicomwebEndpoint, store_datasets
from scu_scp.models import DeliveryError, DeliveryResult, DicomNode
from scu_scp.scu import send_datasets
from scu_scp.spool import Spool
from worker import __version__
from worker.delivery_rules import route_by_rules, web_endpoint
from worker.edge_security import check_destination_tls, destination_node
from worker.jobs import Job, JobStore
from worker.settings import Destination, Settings
from worker.timings import record_timings, timed

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"

Sender = Callable[[DicomNode, Sequence[Dataset]], DeliveryResult]
WebSender = Callable[[DicomwebEndpoint, Sequence[Dataset]], DeliveryResult]


class TransientDeliveryError(Exception):
    """Delivery failed in a way that may succeed later (destination down, refused instances)."""


class NoDestinationError(Exception):
    """No configured destination matches the job: a configuration problem, not retried."""


@dataclass(frozen=True)
class Runtime:
    """What a worker process needs to run jobs, built once per process."""

    settings: Settings
    store: JobStore
    spool: Spool
    pipelines: dict[str, Pipeline]
    send: Sender
    send_web: WebSender = store_datasets


def make_sender(settings: Settings) -> Sender:
    check_destination_tls(settings)

    def send(node: DicomNode, datasets: Sequence[Dataset]) -> DeliveryResult:
        return send_datasets(
            node,
            datasets,
            calling_ae=settings.scp.ae_title,
            timeout=settings.delivery.timeout_seconds,
        )

    return send


def choose_destinations(
    settings: Settings,
    calling_ae: str,
    *,
    modalities: Sequence[str] = (),
    pipelines: Sequence[str] = (),
) -> list[tuple[str, Destination]]:
    """Where results go: matching ``delivery.rules``, else the source's ``deliver_to``, else
    ``delivery.to``, else the caller's own node, else the default."""
    routed = route_by_rules(settings, calling_ae, modalities=modalities, pipelines=pipelines)
    if routed:
        return [(name, settings.destinations[name]) for name in routed]
    if settings.delivery.to:
        return [(name, settings.destinations[name]) for name in settings.delivery.to]
    for name, dest in settings.destinations.items():
        if dest.ae_title == calling_ae:
            return [(name, dest)]
    for name, dest in settings.destinations.items():
        if dest.default:
            return [(name, dest)]
    raise NoDestinationError(
        f"no destination for calling AE {calling_ae!r}: configure a destination with that "
        "AE title, mark one as default, or set delivery.to"
    )


def _outcome_record(outcome: Any) -> dict[str, Any]:
    return {
        "series_uid": outcome.series_uid,
        "modality": outcome.modality,
        "pipeline": outcome.pipeline,
        "status": outcome.status,
        "reason": outcome.reason,
        "outputs": [ds.SOPInstanceUID for ds in outcome.outputs],
    }


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _save_results(folder: Path, result: StudyResult) -> list[dict[str, Any]]:
    """Keep the outputs on disk before delivery, so a delivery retry does not recompute them.

    The manifest is written last: without it the folder is an interrupted attempt.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for ds in result.outputs:
        target = folder / f"{ds.SOPInstanceUID}.dcm"
        tmp = target.with_name(target.name + ".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(target)
    outcomes = [_outcome_record(o) for o in result.outcomes]
    manifest = {"outputs": [ds.SOPInstanceUID for ds in result.outputs], "outcomes": outcomes}
    _fsync_write(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    return outcomes


def _load_results(folder: Path) -> tuple[list[Dataset], list[dict[str, Any]]] | None:
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    outputs: list[Dataset] = [pydicom.dcmread(folder / f"{uid}.dcm") for uid in manifest["outputs"]]
    outcomes: list[dict[str, Any]] = manifest["outcomes"]
    return outputs, outcomes


def _annotate(rt: Runtime, job: Job) -> tuple[list[Dataset], list[dict[str, Any]]]:
    folder = rt.settings.results_dir / job.id
    saved = _load_results(folder)
    if saved is not None:
        log.info("job %s: reusing results computed by an earlier attempt", job.id)
        return saved
    study = rt.spool.open_sealed(job.id)
    result = annotate_study(
        rt.spool.instance_paths(study),
        rules=rt.settings.routing_rules,
        pipelines=rt.pipelines,
        software_version=__version__,
    )
    with timed(folder, "save"):
        outcomes = _save_results(folder, result)
    record_timings(folder, result.timings)
    return list(result.outputs), outcomes


def _send_to(rt: Runtime, dest: Destination, outputs: Sequence[Dataset]) -> DeliveryResult:
    """C-STORE or STOW-RS by the destination's type; both give per-instance results."""
    if dest.type == "dicomweb":
        return rt.send_web(web_endpoint(dest, rt.settings.delivery.timeout_seconds), outputs)
    return rt.send(destination_node(dest), outputs)


def _deliver(
    rt: Runtime,
    job: Job,
    outputs: Sequence[Dataset],
    outcomes: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    delivered: list[dict[str, Any]] = []
    modalities = [str(o.get("modality") or "") for o in outcomes]
    pipelines = [str(o.get("pipeline") or "") for o in outcomes if o.get("status") != "failed"]
    for name, dest in choose_destinations(
        rt.settings, job.calling_ae, modalities=modalities, pipelines=pipelines
    ):
        try:
            result = _send_to(rt, dest, outputs)
        except DeliveryError as exc:
            raise TransientDeliveryError(f"destination {name}: {exc}") from exc
        if result.failed:
            first = result.failed[0]
            raise TransientDeliveryError(
                f"destination {name} refused {len(result.failed)} of {len(result.instances)} "
                f"instances (first: {first.sop_instance_uid}: {first.error})"
            )
        delivered += [
            {
                "destination": name,
                "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid,
            }
            for i in result.instances
        ]
        log.info("job %s: delivered %d instances to %s", job.id, len(result.instances), name)
    return delivered


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
        outputs, outcomes = _annotate(rt, job)
    except InputError as exc:
        log.warning("job %s failed: %s", job_id, exc)
        return rt.store.mark_failed(job_id, str(exc))
    pipelines = sorted({o["pipeline"] for o in outcomes if o["pipeline"]})
    rt.store.mark_delivering(job_id, pipelines=pipelines, outcomes=outcomes)
    delivered: list[dict[str, Any]] = []
    if outputs:
        try:
            with timed(rt.settings.results_dir / job.id, "deliver"):
                delivered = _deliver(rt, job, outputs, outcomes)
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
