"""Which Celery queue a job goes to, with which soft time limit; which queues a worker takes.

The scheme (README "Models, devices and queues"): every pipeline has a ``queue``
(default ``pacs-annotator``). At dispatch the study's series are routed as the worker
will route them; the job goes to the queue of the first routed pipeline that names a
non-default queue (e.g. ``gpu``), else to the default queue. A job runs entirely on one
worker, and every worker can run every pipeline, so a GPU worker also runs the built-in
CPU pipelines of the jobs it takes. Workers take the queues in ``worker.queues``
(``--queues``); empty means every queue the configuration names, which keeps a single
``pacs-annotator up`` working with any configuration.

Soft time limit: when every routed (series, pipeline) pair has ``time_limit_seconds``,
the job's limit is their sum plus ``JOB_OVERHEAD_SECONDS`` (reading, writing, delivery),
capped at ``worker.job_time_limit_seconds``; otherwise the worker-wide limit applies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from pipelines.routing import select_pipelines
from worker.config import DEFAULT_QUEUE, Settings

log = logging.getLogger(__name__)

#: Added to the summed pipeline limits for loading the series and writing/sending results.
JOB_OVERHEAD_SECONDS = 60.0


@dataclass(frozen=True)
class JobRoute:
    """Where one job is queued and how long it may run (None: the worker-wide limit)."""

    queue: str = DEFAULT_QUEUE
    soft_time_limit: float | None = None


def worker_queues(settings: Settings) -> tuple[str, ...]:
    """The queues a worker consumes: ``worker.queues``, or every queue configured."""
    return settings.worker.queues or configured_queues(settings)


def configured_queues(settings: Settings) -> tuple[str, ...]:
    """Every queue a job may be sent to: the default one and those the pipelines name."""
    queues = dict.fromkeys([DEFAULT_QUEUE])
    for bundle in settings.pipelines.values():
        queues[bundle.queue] = None
        if bundle.oom_fallback_queue:
            queues[bundle.oom_fallback_queue] = None
    return tuple(queues)


def plan_job(settings: Settings, paths: Iterable[Path]) -> JobRoute:
    """Route a sealed study's series (one header per series folder) to a queue and a limit."""
    routed: list[str] = []
    for header in _series_headers(paths):
        routed.extend(select_pipelines(settings.routing_rules, header))
    queue = next(
        (
            settings.pipelines[name].queue
            for name in routed
            if name in settings.pipelines and settings.pipelines[name].queue != DEFAULT_QUEUE
        ),
        DEFAULT_QUEUE,
    )
    limits = [
        settings.pipelines[name].time_limit_seconds if name in settings.pipelines else None
        for name in routed
    ]
    soft: float | None = None
    if routed and all(limit is not None for limit in limits):
        total = sum(limit for limit in limits if limit is not None) + JOB_OVERHEAD_SECONDS
        soft = min(total, settings.worker.job_time_limit_seconds)
    return JobRoute(queue=queue, soft_time_limit=soft)


def _series_headers(paths: Iterable[Path]) -> list[pydicom.Dataset]:
    """The header of the first readable instance of each series folder (no pixel data)."""
    headers: dict[Path, pydicom.Dataset] = {}
    for path in sorted(paths):
        if path.parent in headers:
            continue
        try:
            headers[path.parent] = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["Modality", "SeriesDescription", "BodyPartExamined"],
            )
        except (InvalidDicomError, OSError, ValueError) as exc:
            log.warning("cannot read %s for routing: %s", path.name, exc)
    return list(headers.values())
