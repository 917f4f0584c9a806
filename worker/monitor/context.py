"""What every request of the monitor needs (stores, credentials, admin actions), built once.

The app (``worker.monitor.app``) and the pages (``worker.monitor.pages``) both build on it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from fastapi import HTTPException, Request
from fastapi.templating import Jinja2Templates

from scu_scp.spool import Spool, UnknownBatchError
from worker.admin.actions import Admin
from worker.config import Settings
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore, utc_now
from worker.jobs.usage import UsageCache
from worker.monitor.auth import Credentials, TokenChecker
from worker.monitor.fleet import activity_dict, recent_activity, worker_records
from worker.monitor.preview import render_preview
from worker.monitor.previews import PreviewCache, preview_version
from worker.monitor.security import SAFE_METHODS, CrossSiteRequestError, same_origin
from worker.monitor.sessions import LoginThrottle, Session, SessionStore
from worker.monitor.state import Sources, pending_studies, queue_depth, storage
from worker.run.celery_app import job_enqueuer

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "pacs_annotator_session"


class LoginRequiredError(Exception):
    """A page was asked for without a session: the handler sends the browser to /login."""


class Monitor:
    """What every request needs, built once per monitor process."""

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        store = JobStore(settings.effective_database_url)
        client = redis.Redis.from_url(settings.broker_url) if settings.broker_url else None
        spool = Spool(settings.spool_dir)
        usage = UsageCache(settings.monitor.data_usage_cache_seconds)
        self.sources = Sources(settings, store, OpsStore(store.engine), spool, client, usage)
        self.admin = Admin(store, self.sources.ops, spool, job_enqueuer(settings, spool))
        self.credentials = credentials
        config = settings.monitor
        self.session_hours = config.session_hours
        self.sessions = SessionStore(
            settings.monitor_dir / "sessions", credentials, int(config.session_hours * 3600)
        )
        self.throttle = LoginThrottle(config.login_free_attempts, config.login_max_backoff_seconds)
        self.trusted_origins = tuple(config.trusted_origins)
        self.tokens = TokenChecker(credentials)
        self.previews = PreviewCache(config.preview_cache_entries)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def session(self, request: Request) -> Session | None:
        """The live server-side session of the request's cookie, if any."""
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.sessions.find(cookie) if cookie else None

    def actor(self, request: Request) -> str | None:
        """Who is asking: a bearer token, or the user of a live session cookie.

        A cookie-authenticated change (POST...) must come from our own origin: the cookie is
        sent by the browser whatever page made the request.
        """
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.tokens.check(header[7:].strip())
        session = self.session(request)
        if session is None:
            return None
        if request.method not in SAFE_METHODS and not same_origin(request, self.trusted_origins):
            raise CrossSiteRequestError(request.url.path)
        return session.user

    def summary(self) -> dict[str, Any]:
        src = self.sources
        now = utc_now()
        return {
            "counts": {s.value: n for s, n in src.store.counts().items()},
            "queues": self.queues(),
            "workers": self.workers(now),
            "intake_paused": src.ops.intake_paused(),
            "pending_studies": self.pending(),
            "data": self.data(now),
        }

    def workers(self, now: datetime) -> list[dict[str, Any]]:
        """Worker processes with host, device, queues, current job and jobs per hour."""
        src = self.sources
        stale = src.settings.monitor.worker_stale_seconds
        return worker_records(src.store, src.ops, now, stale)

    def activity(self, now: datetime) -> dict[str, Any]:
        """Jobs per hour and queue-to-result latency over the last 24 h, per queue/pipeline."""
        return activity_dict(recent_activity(self.sources.store, now), now)

    def data(self, now: datetime) -> dict[str, Any]:
        """Bytes, counts and oldest age per kind of data, and what disk pressure cannot free."""
        usage, pressure = storage(self.sources)
        return {
            "kinds": {
                kind: {
                    "count": u.count,
                    "bytes": u.bytes,
                    "oldest_age_seconds": u.oldest_age_seconds(now),
                }
                for kind, u in usage.kinds.items()
            },
            "pressure": {"ok": pressure.ok, "detail": pressure.detail},
        }

    def queues(self) -> dict[str, int | None]:
        """Messages waiting in every configured queue."""
        return dict(queue_depth(self.sources))

    def pending(self) -> list[dict[str, Any]]:
        return [
            {
                "study_uid": p.study_uid,
                "last_received": p.last_received.isoformat(),
                "instances": p.instances,
            }
            for p in pending_studies(self.sources.spool)
        ]

    def preview_version(self, job_id: str) -> str:
        """The version of a job's preview that its page links to (see ``previews``)."""
        job = self.sources.store.get(job_id)
        return preview_version(job, self.sources.settings.results_dir)

    def preview(self, job_id: str) -> tuple[bytes, str]:
        """The job's preview PNG and its version, rendered once per version."""
        job = self.sources.store.get(job_id)
        settings = self.sources.settings
        version = preview_version(job, settings.results_dir)

        def render() -> bytes | None:
            try:
                study = self.sources.spool.open_sealed(job.id)
            except UnknownBatchError:
                return None
            return render_preview(
                self.sources.spool.instance_paths(study),
                settings.results_dir / job.id,
                max_pixels=settings.monitor.preview_max_pixels,
            )

        png = self.previews.get((job.id, version), render)
        if png is None:
            raise HTTPException(404, f"job {job_id}: no image series in the spool to preview")
        return png, version
