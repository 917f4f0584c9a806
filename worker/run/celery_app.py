"""The Celery app factory (built from settings, never at import time) and the job producer."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from kombu.exceptions import OperationalError

from scu_scp.spool import Spool
from worker.config import DEFAULT_QUEUE, Settings
from worker.jobs.broker import (
    PROCESS_STUDY,
    EnqueueError,
    require_broker_url,
    service_broker_url,
)
from worker.jobs.queues import JobRoute, plan_job


def create_app(settings: Settings) -> Celery:
    """The app without tasks: producers enqueue by name; ``worker.run.tasks`` adds the task."""
    broker = require_broker_url(
        settings.broker_url, "start the embedded broker first (pacs-annotator up)"
    )
    limit = settings.worker.job_time_limit_seconds
    app = Celery("pacs_annotator", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=DEFAULT_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=limit,
        task_time_limit=limit + 60,
        # An unacknowledged job is handed to another worker only after this (setting
        # worker.visibility_timeout_seconds); a copy that arrives while the job still runs
        # finds its live lease and does nothing (worker/jobs/reliability.py).
        broker_transport_options={
            "visibility_timeout": settings.worker.effective_visibility_timeout
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


def enqueue_job(app: Celery, job_id: str, route: JobRoute | None = None) -> None:
    """Queue one job by task name: the producer never imports the pipelines.

    ``route`` (see ``worker.jobs.queues``) picks the queue and may shorten the soft time
    limit. A broker that cannot be reached raises :class:`EnqueueError`.
    """
    route = route or JobRoute()
    options: dict[str, float] = {}
    if route.soft_time_limit is not None:
        soft = route.soft_time_limit
        options = {"soft_time_limit": soft, "time_limit": soft + 60}
    try:
        app.send_task(PROCESS_STUDY, args=[job_id], queue=route.queue, **options)
    except OperationalError as exc:
        raise EnqueueError(f"job {job_id} not queued: broker unreachable: {exc}") from exc


def job_enqueuer(settings: Settings, spool: Spool) -> Callable[[str], None]:
    """How every producer (SCP dispatcher, pull, retry from the CLI or the monitor) queues a job.

    The broker is ``broker_url``, else the embedded one a running ``up`` published; the
    queue and time limit are planned from the sealed study's series (``worker.jobs.queues``).
    Without a broker the returned function raises EnqueueError, as a broker that is down
    does, so callers handle both the same way.
    """
    broker = service_broker_url(settings.broker_url, settings.redis_dir)
    if not broker:

        def refuse(job_id: str) -> None:
            raise EnqueueError(
                f"job {job_id} not queued: broker_url is empty and no running 'up' published "
                "its embedded Redis"
            )

        return refuse
    app = create_app(settings.model_copy(update={"broker_url": broker}))

    def enqueue(job_id: str) -> None:
        route = plan_job(settings, spool.instance_paths(spool.open_sealed(job_id)))
        enqueue_job(app, job_id, route)

    return enqueue
