"""What every request of the monitor needs (stores, credentials, admin actions), built once.

The app (``worker.monitor.app``) and the pages (``worker.monitor.pages``) both build on it.
"""

from __future__ import annotations

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
from worker.monitor.auth import Credentials, TokenChecker, check_session
from worker.monitor.preview import render_preview
from worker.monitor.state import Sources, pending_studies, queue_depth
from worker.monitor.views import worker_dict
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
        self.sources = Sources(settings, store, OpsStore(store.engine), spool, client)
        self.admin = Admin(store, self.sources.ops, spool, job_enqueuer(settings, spool))
        self.credentials = credentials
        self.session_hours = settings.monitor.session_hours
        self.tokens = TokenChecker(credentials)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    def actor(self, request: Request) -> str | None:
        """Who is asking: a bearer token, or the user of a valid session cookie."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.tokens.check(header[7:].strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        return check_session(self.credentials, cookie, int(self.session_hours * 3600))

    def summary(self) -> dict[str, Any]:
        src = self.sources
        now = utc_now()
        stale = src.settings.monitor.worker_stale_seconds
        return {
            "counts": {s.value: n for s, n in src.store.counts().items()},
            "queues": self.queues(),
            "workers": [worker_dict(w, now, stale) for w in src.ops.workers()],
            "intake_paused": src.ops.intake_paused(),
            "pending_studies": self.pending(),
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
