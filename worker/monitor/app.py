"""The monitor's FastAPI app: built by a factory from Settings, nothing opened at import time.

``/api/...`` answers JSON (401 without credentials), the pages redirect to ``/login``.
``/healthz``, ``/readyz`` and ``/metrics`` are open, as probes and Prometheus expect: they
carry counts and states, no patient data.
"""


import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST

from scu_scp.spool import Spool, UnknownBatchError
from worker import __version__
from worker.admin import ActionError, Admin
from worker.celery_app import create_app as create_celery_app
from worker.celery_app import enqueue_job
from worker.jobs import JobState, JobStore, UnknownJobError
from worker.monitor.auth import Credentials, TokenChecker, check_session, resolve_credentials
from worker.monitor.metrics import render_metrics
from worker.monitor.preview import render_preview
from worker.monitor.state import (
    Sources,
    job_detail_dict,
    job_dict,
    pending_studies,
    queue_depths,
    readiness,
    worker_dict,
)
from worker.ops_store import OpsStore
from worker.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "pacs_annotator_session"


class LoginRequiredError(Exception):
    """A page was asked for without a session: the handler sends the browser to /login."""


def _enqueuer(settings: Settings) -> Any:
    if not settings.broker_url:

        def refuse(job_id: str) -> None:
            raise RuntimeError("broker_url is not set: cannot queue jobs from this monitor")

        return refuse
    celery = create_celery_app(settings, with_tasks=False)
    return lambda job_id: enqueue_job(celery, job_id)


class Monitor:
    """What every request needs, built once per monitor process."""

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        store = JobStore(settings.effective_database_url)
        client = redis.Redis.from_url(settings.broker_url) if settings.broker_url else None
        spool = Spool(settings.spool_dir)
        self.sources = Sources(settings, store, OpsStore(store.engine), spool, client)
        self.admin = Admin(store, self.sources.ops, spool, _enqueuer(settings))
        self.credentials = credentials
        self.tokens = TokenChecker(credentials)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def actor(self, request: Request) -> str | None:
        """Who is asking: a bearer token, or the user of a valid session cookie."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.tokens.check(header[7:].strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        return check_session(self.credentials, cookie) if cookie else None

    def summary(self) -> dict[str, Any]:
        src = self.sources
        now = datetime.now(UTC)
        stale = src.settings.monitor.worker_stale_seconds
        return {
            "counts": {s.value: n for s, n in src.store.counts().items()},
            "queues": self.queues(),
            "workers": [worker_dict(w, now, stale) for w in src.ops.workers()],
            "intake_paused": src.ops.intake_paused(),
            "pending_studies": self.pending(),
        }

    def queues(self) -> dict[str, int | None]:
        if self.sources.redis is None:
            return {}
        try:
            return dict(queue_depths(self.sources.redis))
        except redis.RedisError as exc:
            log.warning("cannot read queue depth: %s", exc)
            return {}

    def pending(self) -> list[dict[str, Any]]:
        return [
            {
                "study_uid": p.study_uid,
                "last_received": p.last_received.isoformat(),
                "instances": p.instances,
            }
            for p in pending_studies(self.sources.spool)
        ]

    def preview(self, job_id: str) -> bytes:
        job = self.sources.store.get(job_id)
        try:
            study = self.sources.spool.open_sealed(job.id)
        except UnknownBatchError as exc:
            raise HTTPException(404, f"job {job_id}: its study is no longer in the spool") from exc
        png = render_preview(
            self.sources.spool.instance_paths(study),
            self.sources.settings.results_dir / job.id,
        )
        if png is None:
            raise HTTPException(404, f"job {job_id}: no image series to preview")
        return png


def create_monitor_app(settings: Settings) -> FastAPI:
    """The web app. ``app.state.generated_password`` is set when a first-login password was
    generated by this call (the server prints it once)."""
    creds, generated = resolve_credentials(
        settings.monitor_dir,
        user=settings.monitor.admin_user,
        password_hash=settings.monitor.password_hash,
        token_hash=settings.monitor.token_hash,
        session_secret=settings.monitor.session_secret,
    )
    monitor = Monitor(settings, creds)
    app = FastAPI(
        title="pacs-annotator monitor",
        version=__version__,
        description="Queue, jobs, workers and admin actions of pacs-annotator.",
    )
    app.state.monitor = monitor
    app.state.generated_password = generated
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(LoginRequiredError)
    def _to_login(request: Request, _exc: LoginRequiredError) -> RedirectResponse:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(UnknownJobError)
    def _unknown_job(_request: Request, exc: UnknownJobError) -> JSONResponse:
        return JSONResponse({"detail": f"no job {exc.args[0]}"}, status_code=404)

    @app.exception_handler(ActionError)
    def _refused(_request: Request, exc: ActionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    _add_open_routes(app, monitor)
    _add_api_routes(app, monitor)
    from worker.monitor.pages import add_page_routes

    add_page_routes(app, monitor)
    return app


def _add_open_routes(app: FastAPI, monitor: Monitor) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The monitor process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Redis, the database and spool disk space; 503 when any fails."""
        src = monitor.sources
        checks = readiness(
            src.store, src.redis, src.settings.spool_dir, src.settings.monitor.min_free_disk_mb
        )
        ok = all(c.ok for c in checks)
        body = {
            "status": "ok" if ok else "unavailable",
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus text format, computed from the job DB, spool and Redis at scrape time."""
        return Response(render_metrics(monitor.sources), media_type=CONTENT_TYPE_LATEST)


def _add_api_routes(app: FastAPI, monitor: Monitor) -> None:
    def api_actor(request: Request) -> str:
        actor = monitor.actor(request)
        if actor is None:
            raise HTTPException(
                401, "log in or send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
            )
        return actor

    Actor = Annotated[str, Depends(api_actor)]  # noqa: N806
    src = monitor.sources

    @app.get("/api/summary", tags=["queue"])
    def summary(_: Actor) -> dict[str, Any]:
        """Counts per state, queue depth, workers, intake state, studies still receiving."""
        return monitor.summary()

    @app.get("/api/jobs", tags=["jobs"])
    def jobs(
        _: Actor,
        state: Annotated[list[JobState] | None, Query()] = None,
        q: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        """Newest first; ``q`` searches accession number, study UID and job id."""
        found = src.store.list(states=state or (), search=q, limit=limit, offset=offset)
        return [job_dict(j) for j in found]

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def job(_: Actor, job_id: str) -> dict[str, Any]:
        """One job with its series outcomes and delivered instances."""
        return job_detail_dict(src.store.get(job_id))

    @app.get("/api/jobs/{job_id}/preview.png", tags=["jobs"], response_class=Response)
    def preview(_: Actor, job_id: str) -> Response:
        """A few source slices with the SEG overlaid and detections circled."""
        return Response(monitor.preview(job_id), media_type="image/png")

    @app.post("/api/jobs/{job_id}/retry", tags=["actions"])
    def retry(actor: Actor, job_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled job again (409 in any other state)."""
        return job_dict(monitor.admin.retry(job_id, actor))

    @app.post("/api/jobs/{job_id}/cancel", tags=["actions"])
    def cancel(actor: Actor, job_id: str) -> dict[str, Any]:
        """Cancel a job not yet started (409 once it runs)."""
        return job_dict(monitor.admin.cancel(job_id, actor))

    @app.get("/api/studies/pending", tags=["queue"])
    def pending(_: Actor) -> list[dict[str, Any]]:
        """Studies still in their quiet period."""
        return monitor.pending()

    @app.post("/api/studies/{study_uid}/force-complete", tags=["actions"])
    def force_complete(actor: Actor, study_uid: str) -> dict[str, str]:
        """Seal a receiving study now instead of after its quiet period."""
        monitor.admin.force_complete(study_uid, actor)
        return {"status": "requested", "study_uid": study_uid}

    @app.get("/api/intake", tags=["actions"])
    def intake(_: Actor) -> dict[str, bool]:
        return {"paused": src.ops.intake_paused()}

    @app.post("/api/intake/pause", tags=["actions"])
    def pause(actor: Actor) -> dict[str, bool]:
        """The SCP answers C-STORE with 0xA700 (out of resources): the PACS retries later."""
        monitor.admin.set_intake_paused(True, actor)
        return {"paused": True}

    @app.post("/api/intake/resume", tags=["actions"])
    def resume(actor: Actor) -> dict[str, bool]:
        monitor.admin.set_intake_paused(False, actor)
        return {"paused": False}

    @app.get("/api/workers", tags=["queue"])
    def workers(_: Actor) -> list[dict[str, Any]]:
        """Worker processes from their heartbeats; ``online`` if seen recently."""
        now = datetime.now(UTC)
        stale = src.settings.monitor.worker_stale_seconds
        return [worker_dict(w, now, stale) for w in src.ops.workers()]

    @app.get("/api/queues", tags=["queue"])
    def queues(_: Actor) -> dict[str, int | None]:
        """Messages waiting per Celery queue."""
        return monitor.queues()

    @app.get("/api/audit", tags=["actions"])
    def audit(_: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, str]]:
        """Admin actions, newest first: who did what, when."""
        return [
            {
                "at": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in src.ops.audit_entries(limit)
        ]
