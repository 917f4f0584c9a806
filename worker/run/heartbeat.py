"""Worker heartbeats: each Celery pool process writes a row the monitor reads.

A row per process (host/pid): its host, device, queues, the job it runs now and when it was
last seen. Hooked to Celery signals, so it runs only inside worker processes. When a process
takes a job's message it also records on the job which queue the message came from and which
process took it: the monitor's per-queue wait times and jobs per hour per worker read those.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals
from sqlalchemy.exc import SQLAlchemyError

from worker.config import Settings
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore, UnknownJobError, utc_now

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """A daemon thread that upserts this process's row every ``interval`` seconds."""

    def __init__(
        self, ops: OpsStore, *, device: str, queues: tuple[str, ...], interval: float
    ) -> None:
        self._ops = ops
        self.host = socket.gethostname()
        self.name = f"{self.host}/{os.getpid()}"
        self._device = device
        self._queues = queues
        self._interval = interval
        self._started = utc_now()
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Write the first beat now, so the worker shows up before its first job."""
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)
        try:
            self._ops.forget_worker(self.name)
        except SQLAlchemyError as exc:
            log.warning("could not remove heartbeat of %s: %s", self.name, exc)

    def set_current(self, job_id: str | None) -> None:
        self._current = job_id
        self.beat()

    def beat(self) -> None:
        try:
            self._ops.heartbeat(
                self.name,
                host=self.host,
                device=self._device,
                queues=self._queues,
                pid=os.getpid(),
                current_job=self._current,
                started_at=self._started,
            )
        except SQLAlchemyError as exc:  # the database may be briefly away; try next beat
            log.warning("heartbeat of %s not recorded: %s", self.name, exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.beat()


def _delivered_from(task: Any) -> str | None:
    """The queue a task's message was taken from (its routing key), if Celery says."""
    info = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    queue = info.get("routing_key") if isinstance(info, dict) else None
    return str(queue) if queue else None


def install_heartbeat(settings: Settings, queues: tuple[str, ...]) -> None:
    """Start a heartbeat in each pool process and track the job it runs."""
    state: dict[str, Heartbeat] = {}
    stores: dict[str, JobStore] = {}

    def started(**_: Any) -> None:
        store = JobStore(settings.effective_database_url)
        stores["jobs"] = store
        beat = Heartbeat(
            OpsStore(store.engine),
            device=settings.worker.device,
            queues=queues,
            interval=HEARTBEAT_SECONDS,
        )
        state["beat"] = beat
        beat.start()

    def stopping(**_: Any) -> None:
        if "beat" in state:
            state.pop("beat").stop()

    def prerun(args: Any = None, task: Any = None, **_: Any) -> None:
        if "beat" not in state or not args:
            return
        beat, job_id = state["beat"], str(args[0])
        beat.set_current(job_id)
        queue = _delivered_from(task)
        if queue is None:
            return
        try:
            stores["jobs"].note_pickup(job_id, worker=beat.name, queue=queue)
        except UnknownJobError:
            pass  # the task itself reports an unknown job
        except SQLAlchemyError as exc:  # statistics only: the job runs anyway
            log.warning("could not record which worker took job %s: %s", job_id, exc)

    def postrun(**_: Any) -> None:
        if "beat" in state:
            state["beat"].set_current(None)

    signals.worker_process_init.connect(started, weak=False)
    signals.worker_process_shutdown.connect(stopping, weak=False)
    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
