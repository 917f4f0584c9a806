"""The monitor's web defences: origin checks, CSRF tokens, sessions, back-off, headers, docs."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.unit.worker.monitor.conftest import TOKEN, Env, login, login_form
from worker.jobs.store import JobState
from worker.monitor.app import create_monitor_app
from worker.monitor.sessions import LoginThrottle

#: A page of another service on the same host (Orthanc Explorer, Flower): same site, not us.
OTHER_PORT = {"Origin": "http://testserver:8042"}


def test_cookie_posts_from_another_origin_are_refused_and_change_nothing(env: Env) -> None:
    with env.app_client() as client:
        token = login(client)
        attempts = env.store.get(env.failed_job).attempts
        for headers in (
            OTHER_PORT,
            {"Origin": "null"},  # a sandboxed frame
            {"Origin": "", "Referer": "http://testserver:8042/app/explorer.html"},
            {"Origin": ""},  # neither header: refused too
        ):
            for url, data in (
                ("/intake/pause", {"csrf_token": token}),
                ("/api/intake/pause", None),
                (f"/api/jobs/{env.failed_job}/retry", None),
                (f"/jobs/{env.failed_job}/retry", {"csrf_token": token}),
            ):
                refused = client.post(url, data=data, headers=headers, follow_redirects=False)
                assert refused.status_code == 403, (url, headers, refused.text)
        assert not env.ops.intake_paused()
        failed = env.store.get(env.failed_job)
        assert failed.state is JobState.FAILED and failed.attempts == attempts
        # Our own pages (Origin, or Referer only) still work; a bearer client needs neither.
        own = client.post(
            "/api/intake/pause", headers={"Origin": "", "Referer": "http://testserver/"}
        )
        assert own.status_code == 200 and env.ops.intake_paused()
        client.cookies.clear()
        resumed = client.post(
            "/api/intake/resume", headers={"Origin": "", "Authorization": f"Bearer {TOKEN}"}
        )
        assert resumed.status_code == 200 and not env.ops.intake_paused()


def test_forms_need_the_csrf_token_of_their_own_session(env: Env) -> None:
    with env.app_client() as first, env.app_client() as second:
        token = login(first)
        other = login(second)
        for data in ({}, {"csrf_token": other}, {"csrf_token": "0" * 64}):
            refused = first.post("/intake/pause", data=data, follow_redirects=False)
            assert refused.status_code == 403, data
        assert not env.ops.intake_paused()
        page = first.get("/").text
        # Every post form carries the token.
        assert page.count('<form method="post"') == page.count(f'value="{token}"') > 0
        assert first.post("/intake/pause", data={"csrf_token": token}).status_code == 200
        assert env.ops.intake_paused()
        first.post("/intake/resume", data={"csrf_token": token})
        assert not env.ops.intake_paused()


def test_logout_and_a_password_change_end_sessions_on_the_server(env: Env) -> None:
    with env.app_client() as client:
        token = login(client)
        copy = client.cookies["pacs_annotator_session"]
        client.post("/logout", data={"csrf_token": token})
    with env.app_client() as thief:
        thief.cookies.set("pacs_annotator_session", copy)
        assert thief.get("/api/summary").status_code == 401  # the copied cookie is dead
    with env.app_client() as client:
        login(client)
        kept = client.cookies["pacs_annotator_session"]
    with env.app_client(password_hash=env.settings.monitor.token_hash) as changed:
        changed.cookies.set("pacs_annotator_session", kept)
        assert changed.get("/api/summary").status_code == 401
    with env.app_client() as restored:  # the old hash again: still no way back for the cookie
        restored.cookies.set("pacs_annotator_session", kept)
        assert restored.get("/api/summary").status_code == 401


def test_repeated_wrong_logins_back_off_even_for_the_right_password(env: Env) -> None:
    now = [0.0]
    with env.app_client(login_free_attempts=3, login_max_backoff_seconds=60) as client:
        monitor = client.app.state.monitor  # type: ignore[attr-defined]
        monitor.throttle = LoginThrottle(3, 60, clock=lambda: now[0])
        for _ in range(4):
            wrong = client.post("/login", data=login_form(client, "admin", "guess"))
            assert wrong.status_code == 401
        blocked = client.post("/login", data=login_form(client))
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert "pacs_annotator_session" not in blocked.cookies
        now[0] += 2
        login(client)  # the wait is over: the right password works, and clears the count


def test_login_from_another_origin_or_without_the_form_token_is_refused(env: Env) -> None:
    with env.app_client() as client:
        form = login_form(client)
        for data, headers in (
            (form, OTHER_PORT),
            ({**form, "csrf_token": ""}, {}),
            ({**form, "csrf_token": "0" * 64}, {}),
        ):
            response = client.post("/login", data=data, headers=headers)
            assert response.status_code == 403 and "pacs_annotator_session" not in response.cookies
        client.cookies.clear()  # the token belongs to the pre-login cookie it came with
        response = client.post("/login", data=form)
        assert response.status_code == 403


def test_cookie_is_secure_behind_tls(env: Env) -> None:
    with env.app_client() as plain:
        response = plain.post("/login", data=login_form(plain), follow_redirects=False)
        assert "secure" not in response.headers["set-cookie"].lower()
    app = create_monitor_app(env.settings)
    tls_origin = {"Origin": "https://testserver"}
    with TestClient(app, base_url="https://testserver", headers=tls_origin) as tls:
        response = tls.post("/login", data=login_form(tls), follow_redirects=False)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"].lower()
        assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.parametrize("path", ["/login", "/api/summary", "/docs", "/healthz"])
def test_every_response_has_csp_frame_and_nosniff_headers(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def test_swagger_ui_is_served_by_the_monitor_not_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    for asset in sources:
        assert client.get(asset).status_code == 200, asset
    assert "<script>" not in page.text  # no inline script: the CSP can stay script-src 'self'


def test_flash_messages_come_from_a_fixed_set_not_the_url(env: Env) -> None:
    with env.app_client() as client:
        login(client)
        planted = client.get("/", params={"msg": "Call 555-0100 now", "error": "Session expired"})
        assert "555-0100" not in planted.text and "Session expired" not in planted.text
        unknown = client.get("/", params={"flash": "<b>hi</b>"})
        assert 'id="flash"' not in unknown.text
        known = client.get("/", params={"flash": "paused"})
        assert 'id="flash">intake paused<' in known.text


def test_a_trusted_origin_may_post_with_the_cookie(env: Env) -> None:
    proxy = {"Origin": "https://monitor.example"}  # a TLS proxy that rewrites Host
    with env.app_client(trusted_origins=["https://monitor.example"]) as client:
        login(client)
        assert client.post("/api/intake/pause", headers=proxy).status_code == 200
        assert client.post("/api/intake/resume", headers=OTHER_PORT).status_code == 403
        assert client.post("/api/intake/resume", headers=proxy).status_code == 200
    assert not env.ops.intake_paused()
