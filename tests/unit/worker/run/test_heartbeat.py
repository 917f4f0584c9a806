"""Worker heartbeats written to the real job database, and their hooks on Celery's signals."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from celery import signals

from tests.support.jobs import create_job
from worker.config import load_settings
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.run.heartbeat import Heartbeat, install_heartbeat


def test_heartbeat_row_tracks_current_job_and_goes_on_stop(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    ops = OpsStore(store.engine)
    beat = Heartbeat(ops, device="cpu", queues=("pacs-annotator",), interval=0.1)
    beat.start()
    try:
        (row,) = ops.workers()
        assert row.name == beat.name and row.pid == os.getpid() and row.current_job is None
        first_seen = row.last_seen
        beat.set_current("job-7")
        assert ops.workers()[0].current_job == "job-7"
        beat.beat()
        assert ops.workers()[0].last_seen >= first_seen
        beat.set_current(None)
        assert ops.workers()[0].current_job is None
    finally:
        beat.stop()
    assert ops.workers() == []
    store.close()


@pytest.fixture
def worker_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Celery signals install_heartbeat hooks, emptied for the test and restored after."""
    for signal in (
        signals.worker_process_init,
        signals.worker_process_shutdown,
        signals.task_prerun,
        signals.task_postrun,
    ):
        monkeypatch.setattr(signal, "receivers", [])


@pytest.mark.usefixtures("worker_signals")
def test_installed_heartbeat_follows_the_pool_process_and_its_jobs(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, worker={"device": "cuda:1"})
    ops = OpsStore(JobStore(settings.effective_database_url).engine)
    install_heartbeat(settings, ("gpu", "cpu"))
    signals.task_prerun.send(sender=None, task_id="t0", args=["job-0"])  # before the process
    assert ops.workers() == []  # started: nothing to track yet, and nothing breaks

    signals.worker_process_init.send(sender=None)
    (row,) = ops.workers()  # the first beat is written at once, before any job
    assert (row.device, row.queues, row.pid, row.current_job) == (
        "cuda:1",
        ("gpu", "cpu"),
        os.getpid(),
        None,
    )
    signals.task_prerun.send(sender=None, task_id="t1", args=["job-9"])
    assert ops.workers()[0].current_job == "job-9"
    signals.task_postrun.send(sender=None, task_id="t1", args=["job-9"])
    assert ops.workers()[0].current_job is None
    signals.worker_process_shutdown.send(sender=None)
    assert ops.workers() == []  # the row goes with the process
    signals.task_prerun.send(sender=None, task_id="t2", args=["job-10"])
    assert ops.workers() == []  # a late signal does not bring a stopped heartbeat back
    signals.worker_process_shutdown.send(sender=None)  # nor does a second shutdown fail
    assert ops.workers() == []


class _Request:
    def __init__(self, routing_key: str) -> None:
        self.delivery_info = {"exchange": "", "routing_key": routing_key}


class _Task:
    """What Celery passes to task_prerun: the task, whose request says where it came from."""

    def __init__(self, routing_key: str) -> None:
        self.request = _Request(routing_key)


@pytest.mark.usefixtures("worker_signals")
def test_taking_a_message_records_its_queue_and_the_worker_on_the_job(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, worker={"device": "cuda:0"})
    store = JobStore(settings.effective_database_url)
    create_job(store, "job-1")
    store.mark_queued("job-1")
    install_heartbeat(settings, ("gpu",))
    signals.worker_process_init.send(sender=None)
    try:
        (row,) = OpsStore(store.engine).workers()
        assert row.host == socket.gethostname() and row.name == f"{row.host}/{os.getpid()}"
        signals.task_prerun.send(sender=None, task_id="t1", task=_Task("gpu"), args=["job-1"])
        job = store.get("job-1")
        assert (job.queue, job.worker) == ("gpu", row.name)
        # A message for a job that does not exist is the task's to report: nothing breaks.
        signals.task_prerun.send(sender=None, task_id="t2", task=_Task("gpu"), args=["nope"])
    finally:
        signals.worker_process_shutdown.send(sender=None)
    store.close()
