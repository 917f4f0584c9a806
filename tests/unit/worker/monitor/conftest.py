"""A monitor over real state: SQLite job store, spool, real redis-server, real pipeline results."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from pipelines.registry import builtin_pipelines
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, spool_study
from tests.support.phantom import Nodule, make_ct_phantom
from tests.support.processes import require_binaries
from worker.config import Settings, load_settings
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.monitor.app import create_monitor_app
from worker.monitor.auth import hash_secret
from worker.run.processing import Runtime, process_job
from worker.service.embedded_redis import EmbeddedRedis

PASSWORD = "correct horse battery"
TOKEN = "api-token-0123456789"
#: What a browser sends with a post from the monitor's own pages (TestClient's host).
OWN_ORIGIN = {"Origin": "http://testserver"}


@dataclass
class Env:
    settings: Settings
    store: JobStore
    ops: OpsStore
    spool: Spool
    redis: redis.Redis
    runtime: Runtime
    done_job: str
    failed_job: str
    pending_study: str

    def app_client(self, **monitor: Any) -> TestClient:
        settings = self.settings
        if monitor:
            merged = {**settings.monitor.model_dump(), **monitor}
            settings = settings.model_copy(update={"monitor": type(settings.monitor)(**merged)})
        return TestClient(create_monitor_app(settings), headers=OWN_ORIGIN)


def broken_series(datasets: list[Dataset]) -> list[Dataset]:
    """One slice without ImagePositionPatient: the series cannot form a volume."""
    copies = [ds.copy() for ds in datasets]
    del copies[3].ImagePositionPatient
    return copies


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("monitor")
    with EmbeddedRedis(root / "redis") as server:
        settings = load_settings(
            None,
            data_dir=root / "data",
            broker_url=server.url,
            destinations={"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}},
            monitor={"password_hash": hash_secret(PASSWORD), "token_hash": hash_secret(TOKEN)},
        )
        store = JobStore(settings.effective_database_url)
        spool = Spool(settings.spool_dir)
        rt = Runtime(settings, store, spool, dict(builtin_pipelines()), FakePacs())
        phantom = make_ct_phantom(
            slices=20, size=80, pixel_spacing=4.0, nodules=[Nodule((-65.0, 5.0, 20.0), 16.0)]
        ).datasets
        done = process_job(rt, spool_study(rt, phantom)).id
        broken = make_ct_phantom(slices=8, size=32, pixel_spacing=9.0, seed=7).datasets
        failed = process_job(rt, spool_study(rt, broken_series(broken))).id
        pending = make_ct_phantom(slices=2, size=16, pixel_spacing=15.0, seed=9).datasets
        for ds in pending:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            spool.store(
                buf.getvalue(),
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_uid=ds.SOPInstanceUID,
                calling_ae="ORTHANC",
                calling_host="127.0.0.1",
            )
        client = redis.Redis.from_url(server.url)
        yield Env(
            settings,
            store,
            OpsStore(store.engine),
            spool,
            client,
            rt,
            done,
            failed,
            str(pending[0].StudyInstanceUID),
        )
        client.close()
        store.close()


@pytest.fixture(scope="module")
def client(env: Env) -> Iterator[TestClient]:
    with TestClient(create_monitor_app(env.settings), headers=OWN_ORIGIN) as c:
        yield c


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login_form(client: TestClient, user: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    """What the login form posts, with the token of a freshly fetched login page."""
    page = client.get("/login").text
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page)
    assert found, "the login form has no CSRF token"
    return {"user": user, "password": password, "next": "/", "csrf_token": found.group(1)}


def login(client: TestClient, password: str = PASSWORD, user: str = "admin") -> str:
    """Log in through the form; returns the CSRF token the pages then carry."""
    response = client.post(
        "/login", data=login_form(client, user, password), follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert "pacs_annotator_session" in response.cookies
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', client.get("/").text)
    assert found, "the dashboard has no CSRF token in its forms"
    return found.group(1)
