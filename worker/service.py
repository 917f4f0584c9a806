"""Long-running service processes: the SCP with its dispatcher, and ``up`` (everything at once)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from scu_scp.scp import StorageSCP
from scu_scp.spool import Spool
from worker.celery_app import job_enqueuer
from worker.controls import (
    ControlPoller,
    announce_monitor,
    start_monitor_process,
)
from worker.dispatch import Dispatcher
from worker.edge_security import scp_options
from worker.embedded_redis import EmbeddedRedis
from worker.jobs import JobStore
from worker.ops_store import OpsStore
from worker.processes import child_dies_with_parent, stop_process
from worker.pull import StudyPoller
from worker.reliability import requeue_lost_jobs
from worker.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so services shut down cleanly."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def run_scp(
    settings: Settings,
    stop: threading.Event,
    *,
    children: Sequence[tuple[str, subprocess.Popen[bytes]]] = (),
) -> int:
    """Receive studies and queue a job for each completed one until ``stop`` is set.

    ``children`` are the processes ``up`` started (the worker, the monitor), by name: if one
    dies, so does the service, so a supervisor (systemd) restarts everything instead of
    leaving jobs to pile up unseen or the admin without a dashboard.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    edge = scp_options(settings)  # loads TLS files first: a bad one stops start-up
    store = JobStore(settings.effective_database_url)
    spool = Spool(settings.spool_dir)
    enqueue = job_enqueuer(settings, spool)
    dispatcher = Dispatcher(store, spool, enqueue)
    scp = StorageSCP(
        ae_title=settings.scp.ae_title,
        host=settings.scp.host,
        port=settings.scp.port,
        spool=spool,
        on_complete=dispatcher.dispatch,
        quiet_seconds=settings.completion.quiet_seconds,
        **edge,
    )
    controls = ControlPoller(OpsStore(store.engine), scp)
    controls.apply()  # a pause set while the service was down holds from the first C-STORE
    scp.start()
    poller = StudyPoller(settings, store, spool, dispatcher)
    poller.start()
    status = 0
    next_recovery = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() >= next_recovery:
                try:
                    dispatcher.recover()
                    requeue_lost_jobs(settings, store, enqueue)
                except (OperationalError, OSError, RedisError) as exc:  # broker down: next round
                    log.warning("could not queue recovered studies (%s); will retry", exc)
                next_recovery = time.monotonic() + settings.recovery.interval_seconds
            controls.apply()
            dead = [(name, proc) for name, proc in children if proc.poll() is not None]
            if dead:
                name, proc = dead[0]
                log.error("%s process exited with status %s; stopping", name, proc.returncode)
                status = 1
                break
            stop.wait(1.0)
    finally:
        poller.stop()
        scp.stop()
        store.close()
    return status


def start_worker_process(config: Path | None, broker_url: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "worker", "worker"]
    if config is not None:
        args += ["--config", str(config)]
    env = dict(os.environ, **{f"{ENV_PREFIX}BROKER_URL": broker_url})
    return subprocess.Popen(args, env=env, preexec_fn=child_dies_with_parent)


def run_up(settings: Settings, config: Path | None, stop: threading.Event) -> int:
    """SCP + dispatcher here, one Celery worker process, and a private Redis if none is set."""
    embedded: EmbeddedRedis | None = None
    if not settings.broker_url:
        embedded = EmbeddedRedis(settings.redis_dir)
        settings = settings.model_copy(update={"broker_url": embedded.start()})
    children = [("worker", start_worker_process(config, settings.broker_url))]
    if settings.monitor.enabled:
        children.append(("monitor", start_monitor_process(config, settings.broker_url)))
        announce_monitor(settings)
    try:
        return run_scp(settings, stop, children=children)
    finally:
        for _name, proc in reversed(children):
            stop_process(proc, timeout=30)
        if embedded is not None:
            embedded.stop()
