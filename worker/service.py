"""Long-running service processes: the SCP with its dispatcher, and ``up`` (everything at once)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kombu.exceptions import OperationalError

from scu_scp.scp import StorageSCP
from scu_scp.spool import Spool
from worker.celery_app import create_app, enqueue_job
from worker.dispatch import Dispatcher
from worker.edge_security import scp_options
from worker.embedded_redis import EmbeddedRedis
from worker.jobs import JobStore
from worker.processes import child_dies_with_parent, stop_process
from worker.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

RECOVERY_INTERVAL_SECONDS = 60.0


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
    settings: Settings, stop: threading.Event, *, child: subprocess.Popen[bytes] | None = None
) -> int:
    """Receive studies and queue a job for each completed one until ``stop`` is set.

    ``child`` is a worker process started by ``up``: if it dies, so does the service, so a
    supervisor (systemd) restarts everything instead of leaving jobs to pile up unseen.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    edge = scp_options(settings)  # loads TLS files first: a bad one stops start-up
    store = JobStore(settings.effective_database_url)
    spool = Spool(settings.spool_dir)
    app = create_app(settings, with_tasks=False)
    dispatcher = Dispatcher(store, spool, lambda job_id: enqueue_job(app, job_id))
    scp = StorageSCP(
        ae_title=settings.scp.ae_title,
        host=settings.scp.host,
        port=settings.scp.port,
        spool=spool,
        on_complete=dispatcher.dispatch,
        quiet_seconds=settings.completion.quiet_seconds,
        **edge,
    )
    scp.start()
    status = 0
    next_recovery = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() >= next_recovery:
                try:
                    dispatcher.recover()
                except (OperationalError, OSError) as exc:  # broker down: try again next round
                    log.warning("could not queue recovered studies (%s); will retry", exc)
                next_recovery = time.monotonic() + RECOVERY_INTERVAL_SECONDS
            if child is not None and child.poll() is not None:
                log.error("worker process exited with status %s; stopping", child.returncode)
                status = 1
                break
            stop.wait(1.0)
    finally:
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
    worker_proc = start_worker_process(config, settings.broker_url)
    try:
        return run_scp(settings, stop, child=worker_proc)
    finally:
        stop_process(worker_proc, timeout=30)
        if embedded is not None:
            embedded.stop()
