"""A remote worker and the central node's study API over real HTTP (uvicorn on a free port).

The central node is the monitor app over a real SQLite job store and spool; the remote
worker has its own data_dir and shares only the database. Faults are injected in the
client's transport (the one seam all its I/O goes through): a connection cut mid-file, a
corrupted byte, a central node that does not answer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipelines.registry import builtin_pipelines
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, spool_study
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port
from worker.config import Settings, SettingsError, load_settings
from worker.jobs.store import JobState, JobStore
from worker.jobs.worker_tokens import WorkerTokenStore
from worker.monitor.app import create_monitor_app
from worker.monitor.auth import hash_secret
from worker.run import processing
from worker.run.processing import Runtime, process_job
from worker.run.transfer import CentralClient, TransferError

ADMIN_TOKEN = "admin-api-token-42"


@dataclass
class Central:
    settings: Settings
    store: JobStore
    spool: Spool
    url: str
    tokens: WorkerTokenStore
    runtime: Runtime  # a local worker's runtime on the central node (spools, dispatches)

    def running_job(self, datasets: list[Dataset]) -> str:
        """A sealed study whose job a remote worker has claimed."""
        job_id = spool_study(self.runtime, datasets)
        assert self.store.claim(job_id, lease_seconds=60) is not None
        return job_id


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    root = tmp_path_factory.mktemp("central")
    settings = load_settings(
        None,
        data_dir=root / "data",
        destinations={"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}},
        monitor={"token_hash": hash_secret(ADMIN_TOKEN)},
    )
    store = JobStore(settings.effective_database_url)
    spool = Spool(settings.spool_dir)
    runtime = Runtime(settings, store, spool, dict(builtin_pipelines()), FakePacs())
    port = free_port()
    config = uvicorn.Config(
        create_monitor_app(settings), host="127.0.0.1", port=port, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Central(
        settings, store, spool, f"http://127.0.0.1:{port}", WorkerTokenStore(store.engine), runtime
    )
    server.should_exit = True
    thread.join(timeout=30)
    store.close()


def new_study() -> list[Dataset]:
    """A small CT phantom under a new study UID: each test has its own job."""
    return make_ct_phantom(
        slices=10, size=48, pixel_spacing=7.0, seed=5, study_uid=generate_uid()
    ).datasets


def remote_settings(central: Central, root: Path, token: str, **worker: Any) -> Settings:
    token_file = root / "token"
    token_file.write_text(token + "\n")
    return load_settings(
        None,
        data_dir=root / "remote",
        database_url=central.settings.effective_database_url,
        destinations={"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}},
        worker={
            "central_url": central.url,
            "central_token_file": str(token_file),
            "transfer_attempts": 4,
            "transfer_backoff_seconds": 0.5,
            **worker,
        },
    )


class Faults(httpx.HTTPTransport):
    """A real HTTP transport that damages chosen answers once, and records what was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_after: int | None = None  # the next study file answer stops after N bytes
        self.corrupt_next = False  # the next study file answer has one byte flipped
        self.ranges: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "/study/" not in request.url.path:
            return response
        self.ranges.append(request.headers.get("range", ""))
        body = response.read()
        if self.cut_after is not None:
            cut, self.cut_after = self.cut_after, None
            return httpx.Response(
                response.status_code, headers=response.headers, stream=_Cut(body, cut)
            )
        if self.corrupt_next:
            self.corrupt_next = False
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        return httpx.Response(response.status_code, headers=response.headers, content=body)


class _Cut(httpx.SyncByteStream):
    def __init__(self, body: bytes, cut: int) -> None:
        self.body, self.cut = body, cut

    def __iter__(self) -> Iterator[bytes]:
        yield self.body[: self.cut]
        raise httpx.ReadError("connection reset by peer (injected)")


def client_for(settings: Settings, transport: httpx.BaseTransport | None = None) -> Any:
    sleeps: list[float] = []
    client = CentralClient(settings, transport=transport, sleep=sleeps.append)
    return client, sleeps


@pytest.fixture
def token(central: Central, request: pytest.FixtureRequest) -> str:
    name = f"w-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    return central.tokens.create(name, "test", replace=True)


def test_study_arrives_whole_and_verified(central: Central, tmp_path: Path, token: str) -> None:
    job_id = central.running_job(new_study())
    client, sleeps = client_for(remote_settings(central, tmp_path, token))
    paths = client.fetch_study(job_id)
    originals = Spool.instance_paths(central.spool.open_sealed(job_id))
    assert [p.relative_to(paths[0].parents[1]) for p in paths] == [
        p.relative_to(originals[0].parents[1]) for p in originals
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, originals, strict=True))
    assert paths[0].parents[1] == tmp_path / "remote" / "remote" / "studies" / job_id
    assert not list((tmp_path / "remote" / "remote" / "studies").glob("*.partial"))
    assert sleeps == []


def test_interrupted_download_resumes_where_it_stopped(
    central: Central, tmp_path: Path, token: str
) -> None:
    job_id = central.running_job(new_study())
    faults = Faults()
    faults.cut_after = 1000
    client, sleeps = client_for(remote_settings(central, tmp_path, token), faults)
    paths = client.fetch_study(job_id)
    originals = Spool.instance_paths(central.spool.open_sealed(job_id))
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, originals, strict=True))
    assert faults.ranges[:2] == ["", "bytes=1000-"], "the second request resumes at byte 1000"
    assert sleeps == [0.5]


def test_corrupt_download_is_fetched_again(central: Central, tmp_path: Path, token: str) -> None:
    job_id = central.running_job(new_study())
    faults = Faults()
    faults.corrupt_next = True
    client, sleeps = client_for(remote_settings(central, tmp_path, token), faults)
    paths = client.fetch_study(job_id)
    originals = Spool.instance_paths(central.spool.open_sealed(job_id))
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, originals, strict=True))
    assert faults.ranges[:2] == ["", ""], "a corrupt file is fetched again from the start"
    assert sleeps == [0.5]


def test_unreachable_central_fails_after_backing_off(
    central: Central, tmp_path: Path, token: str
) -> None:
    settings = remote_settings(central, tmp_path, token)
    dead = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"central_url": f"http://127.0.0.1:{free_port()}"}
            )
        }
    )
    client, sleeps = client_for(dead)
    with pytest.raises(TransferError, match="failed 4 times"):
        client.fetch_study("20260101T000000Z-00000000")
    assert sleeps == [0.5, 1.0, 2.0]


def test_revoked_token_is_refused_at_once(central: Central, tmp_path: Path) -> None:
    token = central.tokens.create("to-revoke", "test", replace=True)
    job_id = central.running_job(new_study())
    client, sleeps = client_for(remote_settings(central, tmp_path, token))
    assert client.whoami() == "to-revoke"
    central.tokens.revoke("to-revoke")
    with pytest.raises(SettingsError, match="unknown or revoked"):
        client.whoami()
    with pytest.raises(TransferError, match="401"):
        client.fetch_study(job_id)
    assert sleeps == [], "a refused token is not retried"


def test_only_running_jobs_are_served(central: Central, tmp_path: Path, token: str) -> None:
    job_id = central.running_job(new_study())
    central.store.mark_done(job_id, delivered=[])
    client, _ = client_for(remote_settings(central, tmp_path, token))
    with pytest.raises(TransferError, match=r"409.*only a running job"):
        client.fetch_study(job_id)


@pytest.mark.parametrize(
    "path",
    [
        "study/..%2F..%2Fjobs.sqlite3/x.dcm",
        "study/1.2.3/..%2F..%2Fstudy.json",
        "study/1.2/3.dcm.json",
        "results/..%2Fx",
        "results/manifest.json.tmp",
    ],
)
def test_names_outside_the_folders_are_refused(central: Central, token: str, path: str) -> None:
    job_id = central.running_job(new_study())
    answer = httpx.get(
        f"{central.url}/remote/v1/jobs/{job_id}/{path}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code in (400, 404), answer.text
    assert answer.status_code == 404 or "name" in answer.text or "UID" in answer.text


def _results_folder(folder: Path, marker: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "1.2.3.dcm").write_bytes(b"DICM" + marker)
    (folder / "manifest.json").write_text(json.dumps({"outputs": ["1.2.3"], "outcomes": []}))
    (folder / "timings.json").write_text(json.dumps({"pipelines": 1.5}))
    return folder


def test_results_commit_once_and_whole(central: Central, tmp_path: Path, token: str) -> None:
    job_id = central.running_job(new_study())
    client, _ = client_for(remote_settings(central, tmp_path, token))
    assert client.commit_results(job_id, _results_folder(tmp_path / "first", b"first"))
    committed = central.settings.results_dir / job_id
    assert (committed / "1.2.3.dcm").read_bytes() == b"DICMfirst"
    assert json.loads((committed / "timings.json").read_text()) == {"pipelines": 1.5}

    # A second attempt's upload does not replace what was committed; it is told so.
    assert not client.commit_results(job_id, _results_folder(tmp_path / "second", b"second"))
    assert (committed / "1.2.3.dcm").read_bytes() == b"DICMfirst"
    assert not list((central.settings.data_dir / "remote" / "uploads").iterdir())

    assert client.fetch_results(job_id, tmp_path / "fetched")
    assert (tmp_path / "fetched" / "1.2.3.dcm").read_bytes() == b"DICMfirst"


def test_commit_checks_every_file(central: Central, tmp_path: Path, token: str) -> None:
    job_id = central.running_job(new_study())
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{central.url}/remote/v1/jobs/{job_id}/uploads/{'ab' * 8}"
    wrong = httpx.put(
        f"{base}/1.2.3.dcm", params={"size": 5, "sha256": "0" * 64}, content=b"DICMx",
        headers=headers,
    )  # fmt: skip
    assert wrong.status_code == 400 and "SHA-256" in wrong.text

    # The manifest names an output that was never uploaded: nothing is committed.
    folder = _results_folder(tmp_path / "r", b"x")
    (folder / "1.2.3.dcm").unlink()
    client, _ = client_for(remote_settings(central, tmp_path, token))
    with pytest.raises(TransferError, match="outputs not uploaded"):
        client.commit_results(job_id, folder)
    assert not (central.settings.results_dir / job_id).exists()


def test_a_remote_worker_runs_a_job_end_to_end(
    central: Central, tmp_path: Path, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetch, pipelines, commit, deliver; the central node's preview and retry use the result."""
    job_id = spool_study(central.runtime, new_study())
    settings = remote_settings(central, tmp_path, token)
    pacs = FakePacs()
    client, _ = client_for(settings)
    rt = Runtime(
        settings,
        JobStore(settings.effective_database_url),
        Spool(settings.spool_dir),
        dict(builtin_pipelines()),
        pacs,
        central=client,
    )
    job = process_job(rt, job_id)
    assert job.state is JobState.DONE, job.error
    first = sorted(uid for _, uid in pacs.received)
    assert len(first) == 2

    committed = central.settings.results_dir / job_id
    assert (committed / "manifest.json").exists()
    timings = json.loads((committed / "timings.json").read_text())
    assert {"fetch", "pipelines", "save", "deliver"} <= timings.keys()
    # Nothing of the study or its results stays on the remote machine.
    assert not list((settings.data_dir / "remote" / "studies").iterdir())
    assert not (settings.data_dir / "remote" / "results" / job_id).exists()

    admin = TestClient(
        create_monitor_app(central.settings), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    preview = admin.get(f"/api/jobs/{job_id}/preview.png")
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")

    # A retry: the next attempt delivers the committed results, computes nothing.
    central.store.mark_failed(job_id, "the PACS lost them")
    assert central.store.reset_for_retry(job_id)  # what Admin.retry does before queueing

    def no_pipelines(*args: object, **kwargs: object) -> None:
        raise AssertionError("the retry ran the pipelines again")

    monkeypatch.setattr(processing, "annotate_study", no_pipelines)
    again = process_job(rt, job_id)
    assert again.state is JobState.DONE, again.error
    assert sorted(uid for _, uid in pacs.received[2:]) == first
    assert not (settings.data_dir / "remote" / "results" / job_id).exists()


def test_copies_of_attempts_killed_long_ago_are_swept(
    central: Central, tmp_path: Path, token: str
) -> None:
    client, _ = client_for(remote_settings(central, tmp_path, token))
    old = client.studies / "20260101T000000Z-00000000.partial"
    new = client.results_dir / "20260101T000000Z-11111111"
    for folder in (old, new):
        (folder / "1.2").mkdir(parents=True)
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert client.sweep(older_than_seconds=3600) == 1
    assert not old.exists() and new.exists()
