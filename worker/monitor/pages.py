"""Server-rendered pages: login, dashboard, job page, and the form posts of the actions.

Plain HTML forms and a meta refresh: no JavaScript build step. Actions redirect back with a
flash key, so a reload never repeats them; the page shows the fixed text of that key, never
text from the URL. Every form carries the session's CSRF token.
"""

import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from worker.admin.actions import ActionError, cancellable, inputs_purged_reason, retryable
from worker.jobs.store import JobState, UnknownJobError, utc_now
from worker.monitor.auth import check_login
from worker.monitor.charts import jobs_per_hour_chart, latency_chart
from worker.monitor.context import SESSION_COOKIE, LoginRequiredError, Monitor
from worker.monitor.security import same_origin
from worker.run.timings import read_timings

log = logging.getLogger(__name__)

#: A random value set with the login form, so the form can carry a CSRF token too.
LOGIN_COOKIE = "pacs_annotator_login"


def _safe_next(target: str) -> str:
    """Only local paths: a login link must not bounce the browser to another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


#: The only messages a page shows after an action: ``?flash=<key>`` picks one, nothing else.
FLASH: dict[str, tuple[str, bool]] = {
    "retried": ("queued again", False),
    "cancelled": ("cancelled", False),
    "completing": ("the study will complete within seconds", False),
    "paused": ("intake paused", False),
    "resumed": ("intake resumed", False),
    "refused": ("not done: the job or study is not in a state that allows it", True),
    "logged-out": ("logged out", False),
}


def _back(path: str, key: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?flash={key}", status_code=303)


def add_page_routes(app: FastAPI, monitor: Monitor) -> None:
    settings = monitor.sources.settings
    templates = monitor.templates

    def page_actor(request: Request) -> str:
        actor = monitor.actor(request)
        if actor is None:
            raise LoginRequiredError
        return actor

    def form_actor(request: Request, csrf_token: Annotated[str, Form()] = "") -> str:
        """The actor of a form post, whose CSRF token must belong to its session."""
        actor = page_actor(request)
        session = monitor.session(request)
        if session is not None and not monitor.sessions.csrf_ok(session, csrf_token):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        return actor

    Actor = Annotated[str, Depends(page_actor)]  # noqa: N806
    FormActor = Annotated[str, Depends(form_actor)]  # noqa: N806

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("refresh", settings.monitor.refresh_seconds)
        text, is_error = FLASH.get(request.query_params.get("flash", ""), (None, False))
        context.setdefault("error" if is_error else "msg", text)
        session = monitor.session(request)
        context.setdefault("csrf_token", monitor.sessions.csrf_token(session) if session else "")
        return templates.TemplateResponse(request, name, context, status_code=status)

    def login_page(
        request: Request, next: str, status: int = 200, error: str | None = None
    ) -> HTMLResponse:
        """The login form with its token, and the pre-login cookie the token is bound to."""
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
        token = monitor.sessions.login_token(nonce)
        context: dict[str, Any] = {"next": _safe_next(next), "refresh": 0, "csrf_token": token}
        if error:
            context["error"] = error
        response = render(request, "login.html", status, **context)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return login_page(request, next)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login(
        request: Request,
        user: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
        csrf_token: Annotated[str, Form()] = "",
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request, monitor.trusted_origins) or not (
            monitor.sessions.login_token_ok(nonce, csrf_token)
        ):
            raise HTTPException(403, "login must come from the monitor's own login page")
        user = user[:64]
        address = request.client.host if request.client else ""
        wait = monitor.throttle.wait_seconds(user, address)
        if wait > 0:
            log.warning("monitor login refused for user %r: backing off %.0f s", user, wait)
            refused = login_page(request, next, 429, "too many failed logins: try again later")
            refused.headers["Retry-After"] = str(int(wait) + 1)
            return refused
        actor = check_login(monitor.credentials, monitor.tokens, user, password)
        if actor is None:
            monitor.throttle.failed(user, address)
            log.warning("monitor login refused for user %r", user)
            return login_page(request, next, 401, "wrong user or password")
        monitor.throttle.succeeded(user, address)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.delete_cookie(LOGIN_COOKIE)
        response.set_cookie(
            SESSION_COOKIE,
            monitor.sessions.open(actor),
            max_age=int(settings.monitor.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",  # behind TLS (uvicorn's or a proxy's)
        )
        monitor.sources.ops.audit(actor, "login", "monitor")
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, _: FormActor) -> RedirectResponse:
        """Ends the session on the server: a copy of the cookie stops working too."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            monitor.sessions.close(cookie)
        response = RedirectResponse("/login?flash=logged-out", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(
        request: Request, actor: Actor, state: str = "", q: str = "", limit: int = 100
    ) -> HTMLResponse:
        states = [JobState(state)] if state in {s.value for s in JobState} else []
        src = monitor.sources
        jobs = src.store.list(states=states, search=q or None, limit=max(1, min(limit, 1000)))
        now = utc_now()
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
            activity=_activity_charts(monitor.activity(now)),
            now=now,
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
            inputs_purged=inputs_purged_reason(job),
            can_cancel=cancellable(job),
            preview_version=monitor.preview_version(job.id),
            audit=audit,
        )

    def _activity_charts(activity: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Each queue's and pipeline's numbers with its two charts (server-side SVG)."""
        return {
            kind: [
                {
                    **group,
                    "jobs_chart": jobs_per_hour_chart(
                        f"jobs per hour, {kind[:-1]} {group['name']}",
                        group["finished_per_hour"],
                        group["failed_per_hour"],
                    ),
                    "latency_chart": latency_chart(
                        f"queue-to-result latency, {kind[:-1]} {group['name']}",
                        group["latency_median_seconds"],
                        group["latency_p95_seconds"],
                    ),
                }
                for group in activity[kind]
            ]
            for kind in ("queues", "pipelines")
        }

    def act(back: str, action: Callable[[], object], done: str) -> RedirectResponse:
        """Run an admin action and return to ``back`` with its outcome."""
        try:
            action()
        except ActionError as exc:
            log.info("monitor action refused: %s", exc)  # UIDs and job ids only
            return _back(back, "refused")
        return _back(back, done)

    @app.post("/jobs/{job_id}/retry", include_in_schema=False)
    def retry(actor: FormActor, job_id: str) -> RedirectResponse:
        return act(f"/jobs/{job_id}", lambda: monitor.admin.retry(job_id, actor), "retried")

    @app.post("/jobs/{job_id}/cancel", include_in_schema=False)
    def cancel(actor: FormActor, job_id: str) -> RedirectResponse:
        return act(f"/jobs/{job_id}", lambda: monitor.admin.cancel(job_id, actor), "cancelled")

    @app.post("/studies/{study_uid}/force-complete", include_in_schema=False)
    def force_complete(actor: FormActor, study_uid: str) -> RedirectResponse:
        return act("/", lambda: monitor.admin.force_complete(study_uid, actor), "completing")

    @app.post("/intake/{action}", include_in_schema=False)
    def intake(actor: FormActor, action: str) -> RedirectResponse:
        if action not in ("pause", "resume"):
            return _back("/", "refused")
        monitor.admin.set_intake_paused(action == "pause", actor)
        return _back("/", "paused" if action == "pause" else "resumed")
