"""`up` on its own: a private, supervised Redis, private files, no credentials shown.

One real ``pacs-annotator up`` (SCP, worker, monitor, embedded redis-server) receives a CT
study over DICOM after its redis-server was killed with SIGKILL; the job runs, and its
delivery to a DICOMweb archive whose URL carries a password fails without showing it.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support.phantom import make_ct_phantom
from tests.support.processes import (
    free_port,
    log_tail,
    require_binaries,
    start_command,
    stop_process,
    wait_for_port,
)
from tests.support.storescp import wait_for
from worker.jobs.store import JobState, JobStore
from worker.monitor.auth import hash_secret

pytestmark = pytest.mark.integration

SECRET = "s3cret-in-url"
TOKEN = "hardening-test-token"


@dataclass
class Up:
    data: Path
    log: Path
    port: int
    monitor: str
    proc: object

    def redis_pid(self) -> int:
        return int((self.data / "redis" / "redis.pid").read_text())

    def redis_port(self) -> int:
        url = (self.data / "redis" / "url").read_text().strip()
        return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("up-hardening")
    port, monitor_port, dead = free_port(), free_port(), free_port()
    archive = f"http://alice:{SECRET}@127.0.0.1:{dead}/dicom-web"
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(root / "data"),
                "scp": {"ae_title": "ANNOTATOR", "host": "127.0.0.1", "port": port},
                "completion": {"quiet_seconds": 2, "release_grace_seconds": 0.5},
                "destinations": {"archive": {"type": "dicomweb", "url": archive, "default": True}},
                "sources": {"vna": {"url": archive}},
                "delivery": {"max_retries": 0},
                "monitor": {
                    "host": "127.0.0.1",
                    "port": monitor_port,
                    "token_hash": hash_secret(TOKEN),
                },
            }
        )
    )
    log = root / "up.log"
    proc = start_command("up", config, log)
    try:
        wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
        wait_for_port("127.0.0.1", monitor_port, timeout=120, proc=proc)
        yield Up(root / "data", log, port, f"http://127.0.0.1:{monitor_port}", proc)
    finally:
        stop_process(proc, timeout=60)  # type: ignore[arg-type]


def _send_study(port: int) -> str:
    study_uid = generate_uid()
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ANNOTATOR")
    assert assoc.is_established
    for ds in make_ct_phantom(slices=12, size=64, study_uid=study_uid).datasets:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    return study_uid


def test_embedded_redis_refuses_a_client_without_its_password(up: Up) -> None:
    stranger = redis.Redis(host="127.0.0.1", port=up.redis_port())
    with pytest.raises(redis.AuthenticationError):
        stranger.lpush("pacs-annotator", "forged-job")
    stranger.close()
    password = (up.data / "redis" / "password").read_text().strip()
    assert password.encode() not in Path(f"/proc/{up.redis_pid()}/cmdline").read_bytes()


def _worker_ready(up: Up) -> bool:
    lines = up.log.read_text(errors="replace").splitlines()
    return any("celery.apps.worker" in line and line.endswith(" ready.") for line in lines)


def test_after_redis_is_killed_a_study_still_runs_and_secrets_stay_hidden(up: Up) -> None:
    # The worker is connected and consuming when its broker dies: it must reconnect.
    assert wait_for(lambda: _worker_ready(up), timeout=180), log_tail(up.log)
    killed = up.redis_pid()
    os.kill(killed, signal.SIGKILL)
    assert wait_for(lambda: up.redis_pid() != killed, timeout=60), log_tail(up.log)
    assert up.proc.poll() is None, log_tail(up.log)  # type: ignore[attr-defined]

    study_uid = _send_study(up.port)
    store = JobStore(f"sqlite:///{(up.data / 'jobs.sqlite3').resolve()}")
    try:

        def finished() -> bool:
            jobs = store.list(study_uid=study_uid)
            return bool(jobs) and jobs[0].state in (JobState.FAILED, JobState.DONE)

        assert wait_for(finished, timeout=300), log_tail(up.log)
        (job,) = store.list(study_uid=study_uid)
    finally:
        store.close()
    # The pipelines ran; only the delivery to the unreachable archive failed.
    assert job.state is JobState.FAILED, job.error
    assert "***@127.0.0.1" in job.error and SECRET not in job.error, job.error
    headers = {"Authorization": f"Bearer {TOKEN}"}
    api = httpx.get(f"{up.monitor}/api/jobs/{job.id}", headers=headers, timeout=30)
    sources = httpx.get(f"{up.monitor}/api/sources", headers=headers, timeout=30)
    assert api.status_code == 200 and sources.status_code == 200
    assert "***@127.0.0.1" in sources.text
    redis_password = (up.data / "redis" / "password").read_text().strip()
    for text in (api.text, sources.text, up.log.read_text(errors="replace")):
        assert SECRET not in text and "alice" not in text and redis_password not in text

    # umask 077 in every process of the service: spool, results, job DB, redis, monitor.
    results = up.data / "results" / job.id
    assert any(p.suffix == ".dcm" for p in results.rglob("*")), "no results written"
    for path in [up.data, *up.data.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if not path.is_symlink():
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def test_up_exits_non_zero_when_its_redis_cannot_be_restarted(tmp_path: Path) -> None:
    """A redis-server that dies and cannot start again: `up` stops, for systemd to restart."""
    require_binaries("redis-server")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "scp": {"ae_title": "ANNOTATOR", "host": "127.0.0.1", "port": port},
                "monitor": {"enabled": False},
            }
        )
    )
    log = tmp_path / "up.log"
    proc = start_command("up", config, log)
    try:
        wait_for_port("127.0.0.1", port, timeout=120, proc=proc)
        redis_dir = tmp_path / "data" / "redis"
        # Unreadable append-only file: every restart of redis-server fails at once.
        (redis_dir / "appendonlydir" / "appendonly.aof.manifest").write_text("garbage\n")
        os.kill(int((redis_dir / "redis.pid").read_text()), signal.SIGKILL)
        status = proc.wait(timeout=180)
    finally:
        stop_process(proc, timeout=60)
    text = log.read_text(errors="replace")
    assert status == 1, log_tail(log)
    assert "embedded redis-server died 6 times" in text and "giving up" in text, log_tail(log)
    assert "the embedded broker cannot be kept running; stopping" in text
