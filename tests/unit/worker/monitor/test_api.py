"""Every /api endpoint and action, with and without credentials, over real stores and Redis."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image

from tests.support.jobs import spool_study
from tests.support.phantom import make_ct_phantom
from tests.unit.worker.monitor.conftest import TOKEN, Env, bearer, broken_series
from worker.config import DEFAULT_QUEUE
from worker.jobs.broker import queue_depths
from worker.jobs.store import JobState
from worker.run.processing import Runtime, process_job


def _new_job(env: Env, job_id: str, state: JobState) -> str:
    env.store.create(
        job_id=job_id,
        study_uid="1.2.826.0.1.3680043.8.498.1",
        accession_number=f"ACC-{job_id}",
        calling_ae="ORTHANC",
        spool_path="/nonexistent",
        instance_count=1,
        received_at=datetime.now(UTC),
    )
    if state is JobState.QUEUED:
        env.store.mark_queued(job_id)
    elif state is JobState.FAILED:
        env.store.mark_failed(job_id, "pipeline exploded")
    elif state is JobState.DONE:
        env.store.mark_done(job_id, delivered=[])
    return job_id


def _concrete(path: str, env: Env) -> str:
    return path.replace("{job_id}", env.done_job).replace("{study_uid}", env.pending_study)


def test_every_api_route_refuses_without_credentials(client: TestClient, env: Env) -> None:
    routes = [r for r in client.app.routes if isinstance(r, APIRoute) and r.path.startswith("/api")]  # type: ignore[attr-defined]
    assert len(routes) >= 13
    for route in routes:
        for method in route.methods:
            url = _concrete(route.path, env)
            plain = client.request(method, url)
            assert plain.status_code == 401, (method, url, plain.text)
            assert plain.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, url, headers=bearer("not-the-token"))
            assert wrong.status_code == 401, (method, url)
            client.cookies.set("pacs_annotator_session", "admin|99999999999|00")
            forged = client.request(method, url)
            client.cookies.clear()
            assert forged.status_code == 401, (method, url)
    # Nothing changed on the way: the refused actions were not carried out.
    assert env.store.get(env.done_job).state is JobState.DONE
    assert not env.ops.intake_paused()


def test_summary_counts_queues_workers_and_pending(client: TestClient, env: Env) -> None:
    body = client.get("/api/summary", headers=bearer()).json()
    counts = env.store.counts()
    assert body["counts"] == {s.value: n for s, n in counts.items()}
    assert body["counts"]["done"] >= 1 and body["counts"]["failed"] >= 1
    assert body["queues"] == queue_depths(env.redis, [DEFAULT_QUEUE])
    assert env.pending_study in [p["study_uid"] for p in body["pending_studies"]]
    assert body["pending_studies"][0]["instances"] >= 1
    assert body["intake_paused"] is False


def test_jobs_list_filters_search_and_detail(client: TestClient, env: Env) -> None:
    done = client.get("/api/jobs", params={"state": "done"}, headers=bearer()).json()
    assert env.done_job in [j["id"] for j in done]
    assert all(j["state"] == "done" for j in done)
    both = client.get(
        "/api/jobs", params=[("state", "done"), ("state", "failed")], headers=bearer()
    )
    assert {env.done_job, env.failed_job} <= {j["id"] for j in both.json()}
    study = env.store.get(env.done_job).study_uid
    found = client.get("/api/jobs", params={"q": study[-12:]}, headers=bearer()).json()
    assert env.done_job in [j["id"] for j in found]
    assert client.get("/api/jobs", params={"state": "bogus"}, headers=bearer()).status_code == 422

    detail = client.get(f"/api/jobs/{env.done_job}", headers=bearer()).json()
    assert detail["state"] == "done" and detail["pipelines"]
    assert detail["delivered"] and detail["outcomes"]
    assert set(detail["stage_seconds"]) == {"queue_wait", "processing", "delivery"} - (
        set() if detail["queued_at"] else {"queue_wait"}
    )
    assert detail["duration_seconds"] > 0
    # The worker's own step timings: every step ran, and together they fit in the job's time.
    steps = detail["steps"]
    assert {"load", "pipelines", "write", "save", "deliver"} <= set(steps)
    assert 0 < sum(steps.values()) <= detail["duration_seconds"]
    failed = client.get(f"/api/jobs/{env.failed_job}", headers=bearer()).json()
    assert failed["state"] == "failed" and "ImagePositionPatient" in failed["error"]
    assert client.get("/api/jobs/no-such-job", headers=bearer()).status_code == 404


def test_preview_shows_slices_with_segments_and_circled_detection(
    client: TestClient, env: Env
) -> None:
    response = client.get(f"/api/jobs/{env.done_job}/preview.png", headers=bearer())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert image.height == 256 and image.width >= 256 * 2
    rgb = np.asarray(image).astype(int)
    tinted = int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 40).sum())
    assert tinted > 500, "no segment overlay visible"
    yellow = int(((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)).sum())
    assert yellow > 20, "no detection circled"
    # A job whose study has a series but no results still gets its images.
    plain = client.get(f"/api/jobs/{env.failed_job}/preview.png", headers=bearer())
    assert plain.status_code == 200
    assert client.get("/api/jobs/nope/preview.png", headers=bearer()).status_code == 404


def test_retry_requeues_a_failed_job_and_is_audited(client: TestClient, env: Env) -> None:
    broken = make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=11).datasets
    job_id = process_job(env.runtime, spool_study(env.runtime, broken_series(broken))).id
    assert env.store.get(job_id).state is JobState.FAILED
    before = queue_depths(env.redis, [DEFAULT_QUEUE])[DEFAULT_QUEUE]
    response = client.post(f"/api/jobs/{job_id}/retry", headers=bearer())
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "queued" and response.json()["error"] is None
    assert queue_depths(env.redis, [DEFAULT_QUEUE])[DEFAULT_QUEUE] == before + 1
    entry = env.ops.audit_entries(1)[0]
    assert (entry.actor, entry.action, entry.target) == ("token", "retry", job_id)
    again = client.post(f"/api/jobs/{job_id}/retry", headers=bearer())
    assert again.status_code == 409 and "only failed or cancelled" in again.json()["detail"]
    assert client.post(f"/api/jobs/{env.done_job}/retry", headers=bearer()).status_code == 409
    assert client.post("/api/jobs/nope/retry", headers=bearer()).status_code == 404
    env.redis.delete(DEFAULT_QUEUE)


def test_retry_of_a_job_whose_files_left_the_spool_fails_with_the_reason(
    client: TestClient, env: Env
) -> None:
    job_id = _new_job(env, "files-gone", JobState.FAILED)
    response = client.post(f"/api/jobs/{job_id}/retry", headers=bearer())
    assert response.status_code == 409, response.text
    assert "not a spool batch" in response.json()["detail"]
    job = env.store.get(job_id)
    assert job.state is JobState.FAILED and "retry could not be queued" in (job.error or "")


def test_cancel_a_queued_job_which_the_worker_then_skips(client: TestClient, env: Env) -> None:
    job_id = _new_job(env, "cancel-me", JobState.QUEUED)
    response = client.post(f"/api/jobs/{job_id}/cancel", headers=bearer())
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert env.ops.audit_entries(1)[0].action == "cancel"
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=bearer()).status_code == 409
    assert client.post(f"/api/jobs/{env.done_job}/cancel", headers=bearer()).status_code == 409
    # The queued message still reaches a worker: it must not run the job.
    rt = Runtime(env.settings, env.store, env.spool, {}, env.runtime.send)
    assert process_job(rt, job_id).state is JobState.CANCELLED
    assert env.store.get(job_id).attempts == 0


def test_force_complete_a_study_in_its_quiet_period(client: TestClient, env: Env) -> None:
    pending = client.get("/api/studies/pending", headers=bearer()).json()
    assert env.pending_study in [p["study_uid"] for p in pending]
    url = f"/api/studies/{env.pending_study}/force-complete"
    assert client.post(url, headers=bearer()).json()["status"] == "requested"
    assert env.ops.take_force_complete_requests() == [env.pending_study]
    assert env.ops.audit_entries(1)[0].action == "force-complete"
    unknown = client.post("/api/studies/1.2.3.999/force-complete", headers=bearer())
    assert unknown.status_code == 409 and "not waiting" in unknown.json()["detail"]
    bad = client.post("/api/studies/x..y/force-complete", headers=bearer())
    assert bad.status_code == 409


def test_pause_and_resume_intake(client: TestClient, env: Env) -> None:
    assert client.post("/api/intake/pause", headers=bearer()).json() == {"paused": True}
    assert client.get("/api/intake", headers=bearer()).json() == {"paused": True}
    assert env.ops.intake_paused()
    assert client.post("/api/intake/resume", headers=bearer()).json() == {"paused": False}
    assert not env.ops.intake_paused()
    actions = [e.action for e in env.ops.audit_entries(2)]
    assert actions == ["resume-intake", "pause-intake"]


def test_workers_queues_and_audit(client: TestClient, env: Env) -> None:
    env.ops.heartbeat(
        "gpu-box/42",
        device="cpu",
        queues=(DEFAULT_QUEUE,),
        pid=42,
        current_job=env.done_job,
        started_at=datetime.now(UTC),
    )
    workers = client.get("/api/workers", headers=bearer()).json()
    (worker,) = [w for w in workers if w["name"] == "gpu-box/42"]
    assert worker["online"] and worker["device"] == "cpu" and worker["current_job"] == env.done_job
    env.ops.forget_worker("gpu-box/42")
    env.redis.rpush(DEFAULT_QUEUE, b"x", b"y")
    try:
        assert client.get("/api/queues", headers=bearer()).json() == {DEFAULT_QUEUE: 2}
    finally:
        env.redis.delete(DEFAULT_QUEUE)
    env.ops.audit("someone", "test-action", "target-1")
    audit = client.get("/api/audit", params={"limit": 1}, headers=bearer()).json()
    assert audit[0]["actor"] == "someone" and audit[0]["action"] == "test-action"


def test_health_readiness_and_openapi(client: TestClient, env: Env) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"redis", "database", "spool_disk", "disk_pressure"}
    with env.app_client(min_free_disk_mb=10**9) as full:
        refused = full.get("/readyz")
        assert refused.status_code == 503
        assert refused.json()["checks"]["spool_disk"]["ok"] is False
    openapi = client.get("/openapi.json").json()
    for path in ("/api/jobs", "/api/jobs/{job_id}/retry", "/api/intake/pause", "/metrics"):
        assert path in openapi["paths"], path
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("token", [TOKEN])
def test_bearer_token_is_the_audit_actor(client: TestClient, env: Env, token: str) -> None:
    job_id = _new_job(env, "token-cancel", JobState.QUEUED)
    client.post(f"/api/jobs/{job_id}/cancel", headers=bearer(token))
    assert env.store.get(job_id).error == "cancelled by token"
