"""Server-rendered pages: login, dashboard, job page, and the form posts of the actions.

Plain HTML forms and a meta refresh: no JavaScript build step. Actions redirect back with a
message, so a reload never repeats them.
"""

import logging
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from worker.admin.actions import ActionError, cancellable, retryable
from worker.jobs.store import JobState, UnknownJobError, utc_now
from worker.monitor.auth import make_session, verify_secret
from worker.monitor.context import SESSION_COOKIE, LoginRequiredError, Monitor
from worker.run.timings import read_timings

log = logging.getLogger(__name__)


def _safe_next(target: str) -> str:
    """Only local paths: a login link must not bounce the browser to another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _back(path: str, message: str, *, error: bool = False) -> RedirectResponse:
    key = "error" if error else "msg"
    return RedirectResponse(f"{path}?{key}={quote(message)}", status_code=303)


def add_page_routes(app: FastAPI, monitor: Monitor) -> None:
    settings = monitor.sources.settings
    templates = monitor.templates

    def page_actor(request: Request) -> str:
        actor = monitor.actor(request)
        if actor is None:
            raise LoginRequiredError
        return actor

    Actor = Annotated[str, Depends(page_actor)]  # noqa: N806

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("refresh", settings.monitor.refresh_seconds)
        context.setdefault("msg", request.query_params.get("msg"))
        context.setdefault("error", request.query_params.get("error"))
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", next=_safe_next(next), refresh=0)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(
        request: Request,
        user: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        creds = monitor.credentials
        actor: str | None = None
        if (
            creds.password_hash
            and user == creds.user
            and verify_secret(password, creds.password_hash)
        ):
            actor = user
        elif monitor.tokens.check(password):
            actor = "token"
        if actor is None:
            log.warning("monitor login refused for user %r", user[:64])
            return render(
                request,
                "login.html",
                401,
                next=_safe_next(next),
                refresh=0,
                error="wrong user or password",
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        cookie = make_session(creds, actor)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(settings.monitor.session_hours * 3600),
            httponly=True,
            samesite="strict",
        )
        monitor.sources.ops.audit(actor, "login", "monitor")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout() -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(
        request: Request, actor: Actor, state: str = "", q: str = "", limit: int = 100
    ) -> HTMLResponse:
        states = [JobState(state)] if state in {s.value for s in JobState} else []
        src = monitor.sources
        jobs = src.store.list(states=states, search=q or None, limit=max(1, min(limit, 1000)))
        return render(
            request,
            "dashboard.html",
            actor=actor,
            summary=monitor.summary(),
            jobs=jobs,
            states=[s.value for s in JobState],
            state=state,
            q=q,
            audit=src.ops.audit_entries(15),
            now=utc_now(),
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, actor: Actor, job_id: str) -> HTMLResponse:
        try:
            job = monitor.sources.store.get(job_id)
        except UnknownJobError:
            return render(request, "missing.html", 404, actor=actor, job_id=job_id, refresh=0)
        audit = [e for e in monitor.sources.ops.audit_entries(500) if e.target == job_id]
        return render(
            request,
            "job.html",
            actor=actor,
            job=job,
            stages=job.stage_seconds(),
            steps=read_timings(monitor.sources.settings.results_dir / job.id),
            can_retry=retryable(job),
            can_cancel=cancellable(job),
            audit=audit,
        )

    def act(back: str, action: Callable[[], object], done: str) -> RedirectResponse:
        """Run an admin action and return to ``back`` with its outcome."""
        try:
            action()
        except ActionError as exc:
            return _back(back, str(exc), error=True)
        return _back(back, done)

    @app.post("/jobs/{job_id}/retry", include_in_schema=False)
    def retry(actor: Actor, job_id: str) -> RedirectResponse:
        return act(f"/jobs/{job_id}", lambda: monitor.admin.retry(job_id, actor), "queued again")

    @app.post("/jobs/{job_id}/cancel", include_in_schema=False)
    def cancel(actor: Actor, job_id: str) -> RedirectResponse:
        return act(f"/jobs/{job_id}", lambda: monitor.admin.cancel(job_id, actor), "cancelled")

    @app.post("/studies/{study_uid}/force-complete", include_in_schema=False)
    def force_complete(actor: Actor, study_uid: str) -> RedirectResponse:
        return act(
            "/",
            lambda: monitor.admin.force_complete(study_uid, actor),
            f"study {study_uid} will complete within seconds",
        )

    @app.post("/intake/{action}", include_in_schema=False)
    def intake(actor: Actor, action: str) -> RedirectResponse:
        if action not in ("pause", "resume"):
            return _back("/", f"unknown intake action {action!r}", error=True)
        monitor.admin.set_intake_paused(action == "pause", actor)
        return _back("/", "intake paused" if action == "pause" else "intake resumed")
