"""The retention purge beside a running `pacs-annotator up`, over jobs the service made.

Studies are sent with dcmtk ``storescu`` and annotated, delivered to a real Orthanc, failed
(a slice without a position), left waiting for a delivery retry (their destination is
down), cancelled by the admin, or left receiving (a quiet-only calling AE). Only their age
is set, by moving the job store's own timestamps back. ``pacs-annotator purge --dry-run``
must list exactly the expired-and-safe set and remove nothing; ``pacs-annotator purge``
must then remove exactly that set; a purged job's page and its retry (CLI and API) say why
it cannot run again.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.integration.conftest import ANNOTATOR_AET, RunningService, run_up, write_config
from tests.support.orthanc import Orthanc
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port, require_binaries
from tests.support.soak import send_study
from tests.support.stack import write_split_config
from tests.support.studies import write_copy
from worker.jobs.store import Job, JobState, JobStore, utc_now
from worker.monitor.auth import hash_secret

PASSWORD = "purge test password"
TOKEN = "purge-test-token-0123456789"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
DEAD_AE = "DEADROUTE"  # its results go to a destination that is down: waits for a retry
SLOW_AE = "SLOWPACS"  # quiet period only: its study stays receiving


@dataclass
class Made:
    """The service with jobs in every state, by label, and its store."""

    service: RunningService
    store: JobStore
    jobs: dict[str, str]  # label -> job id
    receiving: Path  # the spool folder of the study still receiving
    monitor: str  # the monitor's base URL

    def job(self, label: str) -> Job:
        return self.store.get(self.jobs[label])

    def folders(self, label: str) -> dict[str, Path]:
        job_id = self.jobs[label]
        data = self.service.data_dir
        return {"inputs": data / "spool" / "studies" / job_id, "results": data / "results" / job_id}


def _wait(
    what: str, check: Callable[[], bool], detail: Callable[[], str], timeout: float = 240.0
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {detail()}")
        time.sleep(0.5)


def _age(store: JobStore, job_id: str, age: timedelta, *, finished: bool = True) -> None:
    """Move the job's timestamps back by ``age`` (as if it had been received then)."""
    when = utc_now() - age
    columns = "received_at = :t, queued_at = :t, updated_at = :t"
    if finished:
        columns += ", finished_at = :t"
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE jobs SET {columns} WHERE id = :id"), {"t": when, "id": job_id})


@pytest.fixture(scope="module")
def made(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    require_binaries("redis-server", "storescu")
    root = tmp_path_factory.mktemp("purge-service")
    port, monitor_port = free_port(), free_port()
    base = write_config(root / "base.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    config = write_split_config(
        base,
        root / "config.yaml",
        completion={
            "quiet_seconds": 3600.0,
            "release_grace_seconds": 1.0,
            "quiet_only_aets": [SLOW_AE],
        },
        routing=[{"modality": "CT", "pipelines": ["ct-basic"]}],
        destinations={  # the calling AE's namesake gets its results; the rest: Orthanc
            "dead": {"ae_title": DEAD_AE, "host": "127.0.0.1", "port": free_port()}
        },
        delivery={"max_retries": 5, "retry_delay_seconds": 3600},
        # Defaults otherwise; the schedule runs at start only, so the CLI's purge is the one
        # that acts, and no disk pressure.
        retention={"purge_interval_seconds": 86400, "pressure_free_bytes": 0},
        monitor={
            "port": monitor_port,
            "password_hash": hash_secret(PASSWORD),
            "token_hash": hash_secret(TOKEN),
        },
    )
    good = list(make_ct_phantom(slices=6, size=48, pixel_spacing=6.0).datasets)
    broken = copy.deepcopy(good)
    del broken[2].ImagePositionPatient
    plan = {  # label -> (sources, calling AE)
        "done-new": (good, "PACS"),
        "done-10h": (good, "PACS"),
        "done-200h": (good, "PACS"),
        "done-401d": (good, "PACS"),
        "failed-new": (broken, "PACS"),
        "failed-400h": (broken, "PACS"),
        "retrying-30d": (good, DEAD_AE),
        "cancelled-400h": (good, DEAD_AE),
    }
    with run_up(config, port=port, orthanc=orthanc, timeout=120) as service:
        store = JobStore(f"sqlite:///{service.data_dir / 'jobs.sqlite3'}")
        studies: dict[str, str] = {}
        for label, (sources, calling) in plan.items():
            study, paths = write_copy(sources, root / "out" / label)
            ok, output = send_study(port, ANNOTATOR_AET, paths, calling)
            assert ok, output
            studies[label] = study
        slow_study, paths = write_copy(good, root / "out" / "receiving")
        ok, output = send_study(port, ANNOTATOR_AET, paths, SLOW_AE)
        assert ok, output

        def by_study() -> dict[str, Job]:
            return {j.study_uid: j for j in store.list(limit=1000)}

        def settled() -> bool:
            jobs = by_study()
            if not all(uid in jobs for uid in studies.values()):
                return False
            for label, uid in studies.items():
                job = jobs[uid]
                if label.startswith(("retrying", "cancelled")):
                    if not (job.state is JobState.QUEUED and job.delivery_failures >= 1):
                        return False
                elif job.state not in (JobState.DONE, JobState.FAILED):
                    return False
            return True

        def states() -> str:
            jobs = by_study()
            return ", ".join(
                f"{label} {jobs[uid].state.value} {jobs[uid].delivery_failures} {jobs[uid].error}"
                if uid in jobs
                else f"{label} no job"
                for label, uid in studies.items()
            )

        _wait("every job done, failed or waiting for its delivery retry", settled, states)
        jobs = {label: by_study()[uid].id for label, uid in studies.items()}
        cancelled = service.cli("cancel", jobs["cancelled-400h"])
        assert cancelled.returncode == 0, cancelled.stderr
        for label in ("done-new", "done-10h", "done-200h", "done-401d"):
            assert store.get(jobs[label]).state is JobState.DONE, label
        for label in ("failed-new", "failed-400h"):
            assert store.get(jobs[label]).state is JobState.FAILED, label
        ages = {
            "done-10h": 10 * HOUR,
            "done-200h": 200 * HOUR,
            "done-401d": 401 * DAY,
            "failed-400h": 400 * HOUR,
            "cancelled-400h": 400 * HOUR,
        }
        for label, age in ages.items():
            _age(store, jobs[label], age)
        _age(store, jobs["retrying-30d"], 30 * DAY, finished=False)
        receiving = service.data_dir / "spool" / "incoming" / slow_study
        assert receiving.is_dir(), "the quiet-only study should still be receiving"
        yield Made(service, store, jobs, receiving, f"http://127.0.0.1:{monitor_port}")
        store.close()


def _listed(output: str, verb: str) -> set[tuple[str, str]]:
    """(kind, job id) of every line the purge printed with ``verb``."""
    found = re.findall(rf"^{verb} (\w+)\s+(\S+)\s+\d+ bytes", output, re.MULTILINE)
    return {(kind, name) for kind, name in found}


def _expected(made: Made) -> set[tuple[str, str]]:
    """The expired-and-safe set under the default retention, from what is on disk."""
    out = set()
    delivered = {"done-10h": ("inputs",), "done-200h": ("inputs", "results")}
    delivered["done-401d"] = ("inputs", "results")
    for label, parts in delivered.items():
        out |= {(f"delivered_{part}", made.jobs[label]) for part in parts}
    for label in ("failed-400h", "cancelled-400h"):
        for part, folder in made.folders(label).items():
            if folder.is_dir():
                out.add((f"failed_{part}", made.jobs[label]))
    out.add(("job_records", made.jobs["done-401d"]))
    return out


def test_dry_run_lists_the_expired_and_safe_set_then_purge_removes_exactly_it(made: Made) -> None:
    everything = {
        label: {part: p for part, p in made.folders(label).items() if p.is_dir()}
        for label in made.jobs
    }
    assert everything["done-10h"].keys() == {"inputs", "results"}
    assert everything["retrying-30d"].keys() == {"inputs", "results"}
    expected = _expected(made)
    assert ("failed_inputs", made.jobs["failed-400h"]) in expected

    dry = made.service.cli("purge", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _listed(dry.stdout, "would remove") == expected, dry.stdout
    for label, folders in everything.items():  # nothing removed
        assert all(p.is_dir() for p in folders.values()), label
    assert made.receiving.is_dir()

    done = made.service.cli("purge")
    assert done.returncode == 0, done.stderr
    assert _listed(done.stdout, "removed") == expected, done.stdout
    gone = {(kind, job_id) for kind, job_id in expected if kind != "job_records"}
    for label, folders in everything.items():
        for part, path in folders.items():
            kind = f"{'failed' if label.startswith(('failed', 'cancelled')) else 'delivered'}"
            should_go = (f"{kind}_{part}", made.jobs[label]) in gone
            assert path.exists() is not should_go, (label, part)
    assert made.receiving.is_dir()
    assert made.store.find(made.jobs["done-401d"]) is None  # its row expired too
    assert made.job("retrying-30d").state is JobState.QUEUED  # active: never touched
    assert made.job("done-10h").inputs_purged_at is not None
    assert made.job("done-10h").results_purged_at is None
    again = made.service.cli("purge", "--dry-run")
    assert _listed(again.stdout, "would remove") == set(), again.stdout


def made_origin(client: httpx.Client) -> str:
    url = client.base_url
    return f"{url.scheme}://{url.host}:{url.port}"


def _login(client: httpx.Client) -> None:
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    assert token, "the login form has no CSRF token"
    form = {"user": "admin", "password": PASSWORD, "next": "/", "csrf_token": token.group(1)}
    response = client.post("/login", data=form, headers={"Origin": made_origin(client)})
    assert response.status_code == 303, response.text


def test_a_purged_job_says_why_it_cannot_run_again(made: Made) -> None:
    job_id = made.jobs["failed-400h"]
    if made.job("failed-400h").inputs_purged_at is None:
        assert made.service.cli("purge").returncode == 0
    retry = made.service.cli("retry", job_id)
    assert retry.returncode == 1
    assert "cannot run again" in retry.stderr and "send the study again" in retry.stderr
    assert made.job("failed-400h").state is JobState.FAILED
    with httpx.Client(base_url=made.monitor, timeout=30) as client:
        api = client.post(f"/api/jobs/{job_id}/retry", headers={"Authorization": f"Bearer {TOKEN}"})
        assert api.status_code == 409 and "purged" in api.json()["detail"]
        _login(client)
        page = client.get(f"/jobs/{job_id}").text
    assert 'id="inputs-purged"' in page and "send the study again from the PACS" in page
    assert 'id="retry"' not in page and 'id="preview-purged"' in page
