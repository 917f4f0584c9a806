"""The monitor of a real `pacs-annotator up` (Orthanc, embedded Redis, SQLite), in Chromium.

Completion is forced from the monitor (a long quiet period would otherwise hold every
study), so each job here also proves the monitor -> job DB -> SCP process control path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset

from scu_scp.models import DicomNode
from scu_scp.scp import STATUS_OUT_OF_RESOURCES
from scu_scp.scu import send_datasets
from tests.integration.conftest import ANNOTATOR_AET, run_up, write_config
from tests.support.orthanc import Orthanc, wait_for
from tests.support.phantom import Nodule, make_ct_phantom
from tests.support.processes import (
    free_port,
    log_tail,
    require_binaries,
    wait_for_port,
)
from worker.monitor.auth import hash_secret

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "browser-test-password"
TOKEN = "browser-test-token"
JOB_TIMEOUT = 240.0


@dataclass
class Monitored:
    url: str
    scp_port: int
    log_path: Path
    http: httpx.Client

    def api(self, method: str, path: str) -> Any:
        response = self.http.request(method, path)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def log(self) -> str:
        return log_tail(self.log_path, max_lines=120)


@pytest.fixture(scope="module")
def monitored(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("monitored")
    port, monitor_port = free_port(), free_port()
    config_path = write_config(
        root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc
    )
    config = yaml.safe_load(config_path.read_text())
    # Only a forced completion seals: no quiet period, and no sender's release counts.
    config["completion"] = {"quiet_seconds": 3600, "quiet_only_aets": ["*"]}
    config["monitor"] = {
        "port": monitor_port,
        "password_hash": hash_secret(PASSWORD),
        "token_hash": hash_secret(TOKEN),
        "refresh_seconds": 0,
    }
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{monitor_port}"
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    with run_up(config_path, port=port, orthanc=orthanc, timeout=90) as running:
        try:
            wait_for_port("127.0.0.1", monitor_port, timeout=90, proc=running.proc)
            yield Monitored(url, port, running.log_path, http)
        finally:
            http.close()
        log_path = running.log_path
    assert f"pacs-annotator monitor: http://127.0.0.1:{monitor_port}/" in log_path.read_text()


def _upload(orthanc: Orthanc, datasets: list[Dataset], folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    return str(datasets[0].StudyInstanceUID)


def _force_and_wait(
    monitored: Monitored, study_uid: str, states: tuple[str, ...]
) -> dict[str, Any]:
    """Complete the receiving study from the monitor; return its job once in ``states``."""
    wait_for(
        lambda: study_uid in [p["study_uid"] for p in monitored.api("GET", "/api/studies/pending")],
        timeout=60,
        interval=0.5,
        message="study to show as receiving",
    )
    monitored.api("POST", f"/api/studies/{study_uid}/force-complete")

    def finished() -> dict[str, Any] | None:
        for job in monitored.api("GET", f"/api/jobs?q={study_uid}"):
            if job["study_uid"] == study_uid and job["state"] in states:
                return dict(job)
        return None

    return wait_for(finished, timeout=JOB_TIMEOUT, interval=0.5, message=f"job in {states}")


def _send_from_orthanc(orthanc: Orthanc, study_uid: str) -> None:
    study_id = orthanc.study_id_for_uid(study_uid)
    assert study_id
    orthanc.store_to_modality("annotator", study_id)


def _metrics(monitored: Monitored) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{monitored.url}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_browser_sees_a_round_trip_and_retries_a_failed_job(
    orthanc: Orthanc, monitored: Monitored, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    require_binaries(CHROMIUM)
    before = _metrics(monitored)
    good = make_ct_phantom(
        slices=24, size=96, pixel_spacing=3.5, seed=21, nodules=[Nodule((-65.0, 5.0, 20.0), 16.0)]
    ).datasets
    good_uid = _upload(orthanc, good, tmp_path / "good")
    _send_from_orthanc(orthanc, good_uid)
    done = _force_and_wait(monitored, good_uid, ("done", "failed"))
    assert done["state"] == "done", f"{done['error']}\n{monitored.log()}"

    broken = [
        ds.copy() for ds in make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=22).datasets
    ]
    del broken[2].ImagePositionPatient  # this series cannot form a volume: the job fails
    bad_uid = _upload(orthanc, broken, tmp_path / "bad")
    _send_from_orthanc(orthanc, bad_uid)
    failed = _force_and_wait(monitored, bad_uid, ("failed", "done"))
    assert failed["state"] == "failed" and "ImagePositionPatient" in failed["error"]

    after = _metrics(monitored)
    key = ("pacs_annotator_studies_completed_total", ())
    assert after[key] == before[key] + 1
    key = ("pacs_annotator_instances_received_total", ())
    assert after[key] == before[key] + len(good) + len(broken)
    key = ("pacs_annotator_job_duration_seconds_count", ())
    assert after[key] == before[key] + 2
    assert after[("pacs_annotator_jobs", (("state", "failed"),))] >= 1
    assert ("pacs_annotator_queue_depth", (("queue", "pacs-annotator"),)) in after

    workers = monitored.api("GET", "/api/workers")
    assert [w["device"] for w in workers if w["online"]] == ["cpu"], workers

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(monitored.url + "/")
            expect(page).to_have_url(f"{monitored.url}/login?next=/")
            page.fill("#password", PASSWORD)
            page.click("#login")
            row = page.locator(f'tr[data-job="{done["id"]}"]')
            expect(row.locator("td.state")).to_have_text("done")
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            row.locator("a").first.click()
            expect(page.locator("#job-state")).to_have_text("done")
            page.wait_for_function(
                "() => { const i = document.getElementById('preview');"
                " return i.complete && i.naturalWidth >= 512; }",
                timeout=60_000,
            )
            job = monitored.api("GET", f"/api/jobs/{done['id']}")
            for item in job["delivered"]:
                expect(page.locator("#delivered")).to_contain_text(item["sop_instance_uid"])
            shot = shots / "job.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the finished job page: {shot}")

            page.goto(f"{monitored.url}/jobs/{failed['id']}")
            expect(page.locator("#job-state")).to_have_text("failed")
            expect(page.locator("#attempts")).to_have_text("1")
            page.click("#retry")
            expect(page.locator("#flash")).to_have_text("queued again")
            # The worker runs it again; it fails again the same way, on its second attempt.
            wait_for(
                lambda: (
                    monitored.api("GET", f"/api/jobs/{failed['id']}")["attempts"] == 2
                    and monitored.api("GET", f"/api/jobs/{failed['id']}")["state"] == "failed"
                ),
                timeout=JOB_TIMEOUT,
                interval=0.5,
                message="the retried job to run again",
            )
            page.reload()
            expect(page.locator("#attempts")).to_have_text("2")
            expect(page.locator("#job-state")).to_have_text("failed")
            expect(page.locator("body")).to_contain_text("retry")
            page.screenshot(path=str(shots / "retried.png"), full_page=True)
            print(f"screenshots: {shots}")
        finally:
            browser.close()
    audit = monitored.api("GET", "/api/audit")
    assert ("admin", "retry", failed["id"]) in [
        (e["actor"], e["action"], e["target"]) for e in audit
    ]


def test_paused_intake_refuses_until_resumed(monitored: Monitored) -> None:
    node = DicomNode(ANNOTATOR_AET, "127.0.0.1", monitored.scp_port)
    datasets = make_ct_phantom(slices=4, size=24, pixel_spacing=12.0, seed=23).datasets
    monitored.api("POST", "/api/intake/pause")
    try:
        refused = wait_for(
            lambda: (r := send_datasets(node, datasets[:1], calling_ae="ORTHANC")).failed and r,
            timeout=60,
            interval=0.5,
            message="the SCP to refuse while paused",
        )
        assert refused.failed[0].status == STATUS_OUT_OF_RESOURCES
    finally:
        monitored.api("POST", "/api/intake/resume")
    accepted = wait_for(
        lambda: (r := send_datasets(node, datasets, calling_ae="ORTHANC")).ok and r,
        timeout=60,
        interval=0.5,
        message="the SCP to accept after resume",
    )
    assert len(accepted.instances) == len(datasets)
    job = _force_and_wait(monitored, str(datasets[0].StudyInstanceUID), ("done", "failed"))
    assert job["instances"] == len(datasets)  # the refused instance was sent again, not lost


def test_dashboard_charts_the_last_day_per_queue_and_pipeline(
    orthanc: Orthanc, monitored: Monitored, tmp_path: Path
) -> None:
    """A job run by the real worker is charted (jobs per hour, latency) on the dashboard,
    with the queue it was taken from and the worker process that ran it."""
    from playwright.sync_api import expect, sync_playwright

    require_binaries(CHROMIUM)
    datasets = make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=24).datasets
    study_uid = _upload(orthanc, datasets, tmp_path / "small")
    _send_from_orthanc(orthanc, study_uid)
    done = _force_and_wait(monitored, study_uid, ("done", "failed"))
    assert done["state"] == "done", f"{done['error']}\n{monitored.log()}"
    job = monitored.api("GET", f"/api/jobs/{done['id']}")
    assert job["queue"] == "pacs-annotator", job  # Celery's delivery info, seen by the worker
    workers = {w["name"]: w for w in monitored.api("GET", "/api/workers")}
    assert job["worker"] in workers, (job["worker"], workers)
    ran = workers[job["worker"]]
    assert ran["jobs_per_hour"] >= 1 and ran["host"] == job["worker"].split("/")[0]
    activity = monitored.api("GET", "/api/activity")
    queue = next(g for g in activity["queues"] if g["name"] == "pacs-annotator")
    assert queue["finished_per_hour"][-1] >= 1 and queue["latency_median_seconds"][-1] > 0
    pipelines = {g["name"] for g in activity["pipelines"]}
    assert set(job["pipelines"]) <= pipelines and job["pipelines"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            refused: list[str] = []  # a chart the CSP blocked would be reported here
            page.on("console", lambda m: refused.append(m.text) if "Refused" in m.text else None)
            page.goto(monitored.url + "/")
            page.fill("#password", PASSWORD)
            page.click("#login")
            row = page.locator('#activity-queues tr[data-group="pacs-annotator"]')
            expect(row).to_be_visible()
            jobs_chart = row.locator('svg[data-chart="jobs"]')
            assert int(jobs_chart.get_attribute("data-total") or 0) == queue["total_finished"]
            bar = jobs_chart.locator("rect.bar").last
            box = bar.bounding_box()
            assert box is not None and box["height"] > 1 and box["width"] > 1  # drawn, not empty
            line = row.locator('svg[data-chart="latency"] circle').first
            assert (line.bounding_box() or {"width": 0})["width"] > 0
            for name in job["pipelines"]:
                group = page.locator(f'#activity-pipelines tr[data-group="{name}"]')
                expect(group.locator('svg[data-chart="jobs"] rect.bar').first).to_be_visible()
            worker_row = page.locator(f'tr[data-worker="{job["worker"]}"]')
            assert int(worker_row.locator("td.jobs-per-hour").inner_text()) >= 1
            page.locator("#activity-queues").screenshot(path=str(tmp_path / "activity.png"))
            page.goto(f"{monitored.url}/jobs/{job['id']}")
            expect(page.locator("#job-worker")).to_have_text(
                f"{job['worker']} from queue pacs-annotator"
            )
            assert not refused, refused
        finally:
            browser.close()
