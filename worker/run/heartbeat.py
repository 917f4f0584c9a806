"""Worker heartbeats: each Celery pool process writes a row the monitor reads.

A row per process (host/pid): its device, queues, the job it runs now and when it was last
seen. Hooked to Celery signals, so it runs only inside worker processes.
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
from worker.jobs.store import JobStore, utc_now

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


class Heartbeat:
    """A daemon thread that upserts this process's row every ``interval`` seconds."""

    def __init__(
        self, ops: OpsStore, *, device: str, queues: tuple[str, ...], interval: float
    ) -> None:
        self._ops = ops
        self.name = f"{socket.gethostname()}/{os.getpid()}"
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


def install_heartbeat(settings: Settings, queues: tuple[str, ...]) -> None:
    """Start a heartbeat in each pool process and track the job it runs."""
    state: dict[str, Heartbeat] = {}

    def started(**_: Any) -> None:
        store = JobStore(settings.effective_database_url)
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

    def prerun(args: Any = None, **_: Any) -> None:
        if "beat" in state and args:
            state["beat"].set_current(str(args[0]))

    def postrun(**_: Any) -> None:
        if "beat" in state:
            state["beat"].set_current(None)

    signals.worker_process_init.connect(started, weak=False)
    signals.worker_process_shutdown.connect(stopping, weak=False)
    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
