"""The producer side of the broker seam: every failure to queue is an EnqueueError."""

from __future__ import annotations

from pathlib import Path

import pytest

from scu_scp.spool import Spool
from tests.support.processes import free_port
from worker.config import SettingsError, load_settings
from worker.jobs.broker import EnqueueError
from worker.run.celery_app import create_app, enqueue_job, job_enqueuer


def test_an_app_needs_a_broker_url(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="broker_url is empty"):
        create_app(load_settings(None, data_dir=tmp_path))


def test_without_any_broker_the_enqueuer_refuses_with_enqueue_error(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    enqueue = job_enqueuer(settings, Spool(settings.spool_dir))
    with pytest.raises(EnqueueError, match="job j1 not queued: broker_url is empty"):
        enqueue("j1")


def test_a_broker_that_does_not_answer_is_an_enqueue_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(load_settings(None, data_dir=tmp_path, broker_url=url))
    app.conf.broker_connection_retry = False
    app.conf.task_publish_retry = False
    # kombu's own connection retries (1 s apart, 6 s in all): one attempt says the same
    options = app.conf.broker_transport_options
    app.conf.broker_transport_options = {**options, "max_retries": 0}
    with pytest.raises(EnqueueError, match="job j2 not queued: broker unreachable"):
        enqueue_job(app, "j2")
