"""The SCP process: receive studies, dispatch each completed one as a job, keep jobs alive.

Also the loop that recovers sealed studies without a queued job, re-queues jobs the
broker lost, applies the admin's controls, and watches the children ``up`` started.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from scu_scp.admission import ScpLimits
from scu_scp.connections import ConnectionLimits
from scu_scp.scp import StorageSCP
from scu_scp.security import AllowedCaller, ServerTls, TlsConfigError, server_ssl_context
from scu_scp.spool import Spool
from worker.config import Settings, SettingsError
from worker.jobs.broker import EnqueueError
from worker.jobs.dispatch import Dispatcher
from worker.jobs.ops_store import OpsStore
from worker.jobs.reliability import requeue_lost_jobs
from worker.jobs.retention import Purger
from worker.jobs.store import JobStore
from worker.run.celery_app import job_enqueuer
from worker.service.controls import ControlPoller
from worker.service.logs import receiver_process_setup
from worker.service.retention import PurgeSchedule, start_purge_thread
from worker.sources.poll import StudyPoller

log = logging.getLogger(__name__)


def scp_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of StorageSCP for allow-list, TLS, limits and connection bounds.

    The TLS files are loaded here, at start-up, so a wrong path or a key that does not
    match its certificate stops the command with the setting named.
    """
    scp = settings.scp
    tls: ServerTls | None = None
    if scp.tls is not None:
        tls = ServerTls(
            certificate=scp.tls.certificate,
            private_key=scp.tls.private_key,
            ca_certificates=scp.tls.ca_certificates,
            require_client_certificate=scp.tls.require_client_certificate,
        )
        try:
            server_ssl_context(tls, what="scp.tls")
        except TlsConfigError as exc:
            raise SettingsError(f"invalid settings: {exc}") from exc
    return {
        "allowed_callers": tuple(AllowedCaller(c.ae_title, c.host) for c in scp.allowed_callers),
        "tls": tls,
        "max_associations": scp.max_associations,
        "limits": ScpLimits(
            max_instance_bytes=scp.max_instance_bytes,
            max_study_bytes=scp.max_study_bytes,
            min_free_disk_bytes=scp.min_free_disk_bytes,
        ),
        "connection_limits": ConnectionLimits(
            associate_request_timeout=scp.associate_request_timeout_seconds,
            pdu_timeout=scp.pdu_timeout_seconds,
            max_connections_per_address=scp.max_connections_per_address,
        ),
    }


def run_scp(
    settings: Settings,
    stop: threading.Event,
    *,
    children: Sequence[tuple[str, subprocess.Popen[bytes]]] = (),
    keep_alive: Callable[[], bool] = lambda: True,
) -> int:
    """Receive studies and queue a job for each completed one until ``stop`` is set.

    ``children`` are the processes ``up`` started (the worker, the monitor), by name: if one
    dies, so does the service, so a supervisor (systemd) restarts everything instead of
    leaving jobs to pile up unseen or the admin without a dashboard. ``keep_alive`` is asked
    every second too (``up``'s embedded Redis restarts itself there); False stops the service.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    edge = scp_options(settings)  # loads TLS files first: a bad one stops start-up
    store = JobStore(settings.effective_database_url)
    spool = Spool(settings.spool_dir)
    # pynetdicom writes each arriving C-STORE dataset in tempfile's folder: keep it in
    # the spool, renamed in when complete and emptied at the next start after a crash.
    tempfile.tempdir = str(spool.receiving)
    enqueue = job_enqueuer(settings, spool)
    dispatcher = Dispatcher(store, spool, enqueue)
    scp = StorageSCP(
        ae_title=settings.scp.ae_title,
        host=settings.scp.host,
        port=settings.scp.port,
        spool=spool,
        on_complete=dispatcher.dispatch,
        quiet_seconds=settings.completion.quiet_seconds,
        release_grace_seconds=settings.completion.release_grace_seconds,
        quiet_only_aets=settings.completion.quiet_only_aets,
        processes=settings.scp.receiver_processes,
        process_setup=partial(receiver_process_setup, settings.log_level),
        **edge,
    )
    controls = ControlPoller(OpsStore(store.engine), scp)
    controls.apply()  # a pause set while the service was down holds from the first C-STORE
    scp.start()
    poller = StudyPoller(settings, store, spool, dispatcher)
    poller.start()
    purge_stop = threading.Event()
    purger = Purger(settings, store, OpsStore(store.engine), spool)
    start_purge_thread(PurgeSchedule(purger, settings), purge_stop)
    status = 0
    next_recovery = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() >= next_recovery:
                try:
                    dispatcher.recover()
                    requeue_lost_jobs(settings, store, enqueue)
                except (EnqueueError, OSError, RedisError) as exc:  # broker down: next round
                    log.warning("could not queue recovered studies (%s); will retry", exc)
                next_recovery = time.monotonic() + settings.recovery.interval_seconds
            controls.apply()
            dead = [(name, proc) for name, proc in children if proc.poll() is not None]
            if dead:
                name, proc = dead[0]
                log.error("%s process exited with status %s; stopping", name, proc.returncode)
                status = 1
                break
            if not keep_alive():
                log.error("the embedded broker cannot be kept running; stopping")
                status = 1
                break
            stop.wait(1.0)
    finally:
        purge_stop.set()
        poller.stop()
        scp.stop()
        store.close()
    return status
