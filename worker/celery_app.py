"""The Celery app factory: built from settings, never at import time."""

from __future__ import annotations

from celery import Celery

from worker.settings import Settings

PROCESS_STUDY = "pacs_annotator.process_study"
DEFAULT_QUEUE = "pacs-annotator"


def create_app(settings: Settings, *, with_tasks: bool = True) -> Celery:
    """Build the app. Producers (the SCP process) pass ``with_tasks=False`` and enqueue by name."""
    if not settings.broker_url:
        raise ValueError("broker_url is empty: start the embedded broker first (pacs-annotator up)")
    limit = settings.worker.job_time_limit_seconds
    app = Celery("pacs_annotator", broker=settings.broker_url, set_as_current=False)
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
        # finds its live lease and does nothing (worker/reliability.py).
        broker_transport_options={
            "visibility_timeout": settings.worker.effective_visibility_timeout
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    if with_tasks:
        from worker.tasks import register_tasks

        register_tasks(app, settings)
    return app


def enqueue_job(app: Celery, job_id: str) -> None:
    """Queue one job by task name: the producer never imports the pipelines."""
    app.send_task(PROCESS_STUDY, args=[job_id], queue=DEFAULT_QUEUE)
