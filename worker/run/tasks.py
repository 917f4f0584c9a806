"""The Celery task: thin glue between a queued message and ``process_job``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from pipelines.errors import DeviceOutOfMemoryError
from scu_scp.spool import Spool
from worker.config import Settings
from worker.delivery.deliver import TransientDeliveryError
from worker.delivery.senders import make_sender
from worker.jobs.broker import PROCESS_STUDY
from worker.jobs.queues import JobRoute
from worker.jobs.reliability import LeaseRefresher
from worker.jobs.store import FINAL_STATES, JobStore
from worker.run.bundles import configured_pipelines, load_models
from worker.run.celery_app import create_app, enqueue_job
from worker.run.processing import Runtime, process_job
from worker.run.transfer import CentralClient, TransferError

log = logging.getLogger(__name__)


class _PerProcess:
    """Builds the runtime lazily in each worker process, after the pool has forked.

    Database connections and models must not cross a fork; building on first use in the
    child keeps them warm for every later job of that process.
    """

    def __init__(self, build: Callable[[], Runtime]) -> None:
        self._build = build
        self._pid: int | None = None
        self._runtime: Runtime | None = None

    def get(self) -> Runtime:
        if self._runtime is None or self._pid != os.getpid():
            self._runtime = self._build()
            self._pid = os.getpid()
        return self._runtime


def build_runtime(settings: Settings) -> Runtime:
    """Runs in the worker process after fork: models load here, once, and stay warm."""
    pipelines = configured_pipelines(settings)
    load_models(pipelines)
    central = None
    if settings.worker.central_url:
        central = CentralClient(settings)
        # Copies left by attempts of a worker killed long ago: no job runs longer than
        # its time limit, so a live job's copies are newer.
        central.sweep(older_than_seconds=settings.worker.job_time_limit_seconds + 600)
    return Runtime(
        settings=settings,
        store=JobStore(settings.effective_database_url),
        spool=Spool(settings.spool_dir),
        pipelines=pipelines,
        send=make_sender(settings),
        central=central,
    )


def worker_app(settings: Settings) -> Celery:
    """The app a worker process runs: ``create_app`` with the task registered."""
    app = create_app(settings)
    register_tasks(app, settings)
    return app


def retry_delay(settings: Settings, retries_so_far: int) -> float:
    """Exponential backoff, capped at an hour."""
    return float(min(settings.delivery.retry_delay_seconds * 2**retries_so_far, 3600.0))


def register_tasks(
    app: Celery, settings: Settings, build: Callable[[], Runtime] | None = None
) -> None:
    """Define the tasks on ``app``; ``build`` makes a process's runtime (tests pass fakes)."""
    runtime = _PerProcess(build or (lambda: build_runtime(settings)))

    @app.task(  # type: ignore[untyped-decorator]
        name=PROCESS_STUDY,
        shared=False,  # bound to this app's settings; never registered on other apps
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=settings.delivery.max_retries,
    )
    def process_study(self: Task, job_id: str) -> None:
        rt = runtime.get()
        try:
            with LeaseRefresher(rt.store, job_id, settings.worker.lease_seconds):
                process_job(rt, job_id)
        except TransientDeliveryError as exc:
            retries: int = self.request.retries
            if retries >= settings.delivery.max_retries:
                rt.store.mark_failed(job_id, f"delivery failed after {retries + 1} attempts: {exc}")
                return
            raise _retry_later(self, rt, settings, job_id, exc, str(exc)) from exc
        except TransferError as exc:
            # The central node is unreachable or answered wrongly: run the job again later
            # (here or on another worker); the central copy of the study is untouched.
            if rt.store.get(job_id).state in FINAL_STATES:  # finished elsewhere meanwhile
                log.warning("job %s: transfer failed, job already final: %s", job_id, exc)
                return
            if self.request.retries >= settings.delivery.max_retries:
                rt.store.mark_failed(job_id, f"study transfer failed: {exc}")
                return
            reason = f"study transfer failed: {exc}"
            raise _retry_later(self, rt, settings, job_id, exc, reason) from exc
        except SoftTimeLimitExceeded:
            limits = self.request.timelimit or (None, None)
            soft = limits[1] or app.conf.task_soft_time_limit
            limit = f" of {float(soft):.0f} s" if soft else ""
            reason = f"time limit exceeded: the job ran longer than its soft time limit{limit}"
            log.warning("job %s: %s", job_id, reason)
            rt.store.mark_failed(job_id, reason)
        except DeviceOutOfMemoryError as exc:
            _out_of_memory(app, rt, settings, job_id, exc)
        except Exception as exc:
            # The edge of the job: record the reason so the admin sees it, then fail loudly.
            rt.store.mark_failed(job_id, f"internal error: {type(exc).__name__}: {exc}")
            raise


def _retry_later(
    task: Task, rt: Runtime, settings: Settings, job_id: str, exc: Exception, reason: str
) -> BaseException:
    """Mark the job queued with its reason; Celery's retry (with back-off) raises."""
    retries: int = task.request.retries
    delay = retry_delay(settings, retries)
    rt.store.mark_retrying(job_id, f"{reason} (retry {retries + 1} in {delay:.0f} s)")
    log.warning("job %s: %s; retrying in %.0f s", job_id, reason, delay)
    retry: BaseException = task.retry(countdown=delay, exc=exc)
    return retry


def _out_of_memory(
    app: Celery, rt: Runtime, settings: Settings, job_id: str, exc: DeviceOutOfMemoryError
) -> None:
    """Fail with the reason, or hand the job to the pipeline's CPU queue if one is set.

    The worker itself goes on: the model freed what it could and takes the next job.
    """
    bundle = settings.pipelines.get(exc.pipeline)
    fallback = bundle.oom_fallback_queue if bundle is not None else None
    if fallback is None or not exc.device.startswith("cuda"):
        log.warning("job %s failed: %s", job_id, exc)
        rt.store.mark_failed(job_id, str(exc))
        return
    rt.store.mark_retrying(job_id, f"{exc} (queued again on {fallback})")
    enqueue_job(app, job_id, JobRoute(queue=fallback))
    log.warning("job %s: out of memory on %s; queued again on %s", job_id, exc.device, fallback)
