"""Login, the dashboard and job pages, the form actions, the first-login password, /metrics."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.jobs import spool_study
from tests.support.phantom import make_ct_phantom
from tests.unit.worker.monitor.conftest import (
    OWN_ORIGIN,
    PASSWORD,
    Env,
    broken_series,
    login,
    login_form,
)
from worker.config import load_settings
from worker.jobs.store import JobState
from worker.monitor.app import create_monitor_app
from worker.monitor.auth import verify_secret
from worker.monitor.preview import render_preview
from worker.run.processing import process_job


def _login(client: TestClient, password: str = PASSWORD) -> str:
    return login(client, password)


def test_pages_need_login_and_a_wrong_password_is_refused(env: Env) -> None:
    with env.app_client() as client:
        page = client.get(f"/jobs/{env.done_job}", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == f"/login?next=/jobs/{env.done_job}"
        wrong = client.post("/login", data=login_form(client, "admin", "nope"))
        assert wrong.status_code == 401 and "wrong user or password" in wrong.text
        other_user = client.post("/login", data=login_form(client, "root"))
        assert other_user.status_code == 401
        assert client.get("/", follow_redirects=False).status_code == 303
        outside = client.post(
            "/login",
            data={**login_form(client), "next": "//evil.example/"},
            follow_redirects=False,
        )
        assert outside.headers["location"] == "/"


def test_dashboard_shows_counts_jobs_filters_and_search(env: Env) -> None:
    with env.app_client() as client:
        _login(client)
        page = client.get("/")
        assert page.status_code == 200
        counts = env.store.counts()
        assert f'id="count-done">{counts[JobState.DONE]}<' in page.text
        assert env.done_job in page.text and env.failed_job in page.text
        assert env.pending_study in page.text  # receiving, with its "complete now" button
        assert 'http-equiv="refresh"' in page.text
        failed_only = client.get("/", params={"state": "failed"})
        assert env.failed_job in failed_only.text and env.done_job not in failed_only.text
        accession = env.store.get(env.done_job).accession_number or env.done_job
        searched = client.get("/", params={"q": env.done_job})
        assert env.done_job in searched.text and env.failed_job not in searched.text
        assert accession in searched.text


def test_job_page_shows_timeline_delivered_preview_and_actions(env: Env) -> None:
    with env.app_client() as client:
        _login(client)
        done = client.get(f"/jobs/{env.done_job}")
        assert done.status_code == 200
        job = env.store.get(env.done_job)
        assert job.delivered[0]["sop_instance_uid"] in done.text
        assert '<td class="kind">seg</td>' in done.text  # each delivered object's kind
        assert '<td class="kind">sr</td>' in done.text
        assert f'src="/api/jobs/{env.done_job}/preview.png?v=' in done.text
        assert "processing" in done.text and 'id="retry"' not in done.text
        assert 'id="steps"' in done.text and "<th>pipelines</th>" in done.text
        failed = client.get(f"/jobs/{env.failed_job}")
        assert 'id="retry"' in failed.text and "ImagePositionPatient" in failed.text
        assert client.get("/jobs/nope").status_code == 404


def test_form_actions_redirect_with_a_message_and_are_audited(env: Env) -> None:
    broken = make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=13).datasets
    job_id = process_job(env.runtime, spool_study(env.runtime, broken_series(broken))).id
    with env.app_client() as client:
        form = {"csrf_token": _login(client)}
        response = client.post(f"/jobs/{job_id}/retry", data=form, follow_redirects=False)
        assert response.headers["location"] == f"/jobs/{job_id}?flash=retried"
        assert env.store.get(job_id).state is JobState.QUEUED
        page = client.get(response.headers["location"])
        assert 'id="flash">queued again' in page.text and 'id="cancel"' in page.text
        refused = client.post(f"/jobs/{job_id}/retry", data=form, follow_redirects=False)
        assert refused.headers["location"] == f"/jobs/{job_id}?flash=refused"
        assert 'class="flash err"' in client.get(refused.headers["location"]).text
        client.post(f"/jobs/{job_id}/cancel", data=form)
        assert env.store.get(job_id).state is JobState.CANCELLED
        client.post("/intake/pause", data=form)
        assert env.ops.intake_paused()
        assert "paused: the SCP answers 0xA700" in client.get("/").text
        client.post("/intake/resume", data=form)
        assert not env.ops.intake_paused()
        client.post(f"/studies/{env.pending_study}/force-complete", data=form)
        assert env.ops.take_force_complete_requests() == [env.pending_study]
        actions = [(e.actor, e.action) for e in env.ops.audit_entries(6)]
        assert actions[:5] == [
            ("admin", "force-complete"),
            ("admin", "resume-intake"),
            ("admin", "pause-intake"),
            ("admin", "cancel"),
            ("admin", "retry"),
        ]
        client.post("/logout", data=form)
        assert client.get("/", follow_redirects=False).status_code == 303
    env.redis.delete("pacs-annotator")


def test_first_start_generates_a_private_password_once(env: Env) -> None:
    settings = load_settings(None, data_dir=env.settings.data_dir.parent / "fresh")
    app = create_monitor_app(settings)
    password = app.state.generated_password
    assert password and len(password) >= 20
    secret_file = settings.monitor_dir / "admin-password"
    assert secret_file.read_text().strip() == password
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    hashed = (settings.monitor_dir / "admin-password.hash").read_text().strip()
    assert hashed.startswith("scrypt$") and verify_secret(password, hashed)
    again = create_monitor_app(settings)
    assert again.state.generated_password is None  # printed once, then only the file
    with TestClient(again, headers=OWN_ORIGIN) as client:
        _login(client, password)
        assert client.get("/api/summary").status_code == 200


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_move_after_a_job(env: Env) -> None:
    from tests.support.jobs import spool_study
    from tests.support.phantom import make_ct_phantom
    from worker.run.processing import process_job

    with env.app_client() as client:
        before = _samples(client.get("/metrics").text)
        assert (
            before[("pacs_annotator_jobs", (("state", "done"),))]
            == env.store.counts()[JobState.DONE]
        )
        phantom = make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=3).datasets
        job = process_job(env.runtime, spool_study(env.runtime, phantom))
        assert job.state is JobState.DONE, job.error
        after = _samples(client.get("/metrics").text)
    done = ("pacs_annotator_studies_completed_total", ())
    assert after[done] == before[done] + 1
    received = ("pacs_annotator_instances_received_total", ())
    assert after[received] == before[received] + 8
    count = ("pacs_annotator_job_duration_seconds_count", ())
    assert after[count] == before[count] + 1
    stage = ("pacs_annotator_stage_duration_seconds_count", (("stage", "processing"),))
    assert after[stage] == before[stage] + 1
    assert ("pacs_annotator_queue_depth", (("queue", "pacs-annotator"),)) in after
    assert after[("pacs_annotator_intake_paused", ())] == 0


def test_the_preview_renders_once_per_version_and_page_reloads_reuse_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    renders: list[Path] = []

    def counted(paths: list[Path], results: Path, **kwargs: Any) -> bytes | None:
        renders.append(results)
        return render_preview(paths, results, **kwargs)

    monkeypatch.setattr("worker.monitor.context.render_preview", counted)
    with env.app_client() as client:
        _login(client)
        links = set()
        for _ in range(3):  # the page's auto-refresh
            page = client.get(f"/jobs/{env.done_job}").text
            found = re.search(r'id="preview" src="([^"]+)"', page)
            assert found
            links.add(found.group(1))
        (link,) = links  # the same URL each time, so the browser's copy is used
        for _ in range(3):
            image = client.get(link)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert "immutable" in image.headers["cache-control"]
        assert len(renders) == 1
        stale = client.get(f"/api/jobs/{env.done_job}/preview.png?v=old")
        assert stale.headers["cache-control"] == "private, no-cache" and len(renders) == 1
        etag = {"If-None-Match": stale.headers["etag"]}
        revalidated = client.get(f"/api/jobs/{env.done_job}/preview.png", headers=etag)
        assert revalidated.status_code == 304 and revalidated.content == b""
