"""Two machines simulated on this one: a central node and a remote worker that shares only
the broker and the job database.

The central node runs `pacs-annotator scp`, `monitor` (HTTPS, a test CA) and a local
`worker`, with a real redis-server and PostgreSQL, and Orthanc as the PACS. The remote
`worker` runs in its own mount namespace (`unshare --mount`) where the central data_dir is
hidden under an empty tmpfs, with its own data_dir: everything it gets of a study comes over
the central node's study API, with its own token.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.integration.conftest import write_config
from tests.integration.faults import storescu, write_study
from tests.integration.test_round_trip import instances_of_modality
from tests.support.jobs import postgres_url
from tests.support.orthanc import Orthanc, wait_for
from tests.support.processes import free_port, require_binaries, wait_for_port
from tests.support.stack import REPO_ROOT, RedisServer, ServiceProcess, write_split_config
from worker.jobs.store import JobStore
from worker.jobs.worker_tokens import WorkerTokenStore
from worker.monitor.auth import hash_secret

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "remote-test-admin-token"
TIMEOUT = 240.0
STUDIES = 10


@dataclass
class TwoMachines:
    root: Path
    redis: RedisServer
    central_config: Path
    central_data: Path
    remote_root: Path
    monitor_url: str
    ca_file: Path
    scp_port: int
    database_url: str
    processes: list[ServiceProcess] = field(default_factory=list)

    # -- processes ------------------------------------------------------------------------

    def start(self, name: str, config: Path, **kwargs: Any) -> ServiceProcess:
        proc = ServiceProcess(
            name, ["worker", "--config", str(config)], self.root / f"{name}.log", **kwargs
        )
        self.processes.append(proc)
        return proc

    def isolated(self) -> list[str]:
        """Run under this prefix and the central data_dir is an empty tmpfs."""
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$@"',
            str(self.central_data),
        ]  # fmt: skip

    def remote_config(
        self, name: str, token: Path, file: str = "config.yaml", **changes: Any
    ) -> Path:
        """A remote worker's config: its own data_dir, the shared broker and database."""
        settings: dict[str, Any] = {
            "data_dir": str(self.remote_root / name / "data"),
            "worker": {
                "central_url": self.monitor_url,
                "central_token_file": str(token),
                "central_ca_file": str(self.ca_file),
                "transfer_backoff_seconds": 0.5,
            },
        }
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        (self.remote_root / name).mkdir(parents=True, exist_ok=True)
        return write_split_config(self.central_config, self.remote_root / name / file, **settings)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args, "--config", str(self.central_config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO_ROOT,
        )

    def token(self, name: str) -> Path:
        path = self.remote_root / f"{name}.token"
        result = self.cli("worker-token", "create", name, "--output", str(path))
        assert result.returncode == 0, result.stderr
        return path

    # -- state ----------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        result = self.cli("jobs", "--json", "--limit", "1000")
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def job(self, job_id: str) -> dict[str, Any]:
        return next(j for j in self.jobs() if j["id"] == job_id)

    def wait(self, what: str, check: Any) -> Any:
        try:
            return wait_for(check, timeout=TIMEOUT, interval=0.5, message=what)
        except Exception:
            print(self.tails())
            raise

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.monitor_url,
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=60,
        )

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.processes)


def _tls(root: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = root / "ca.pem", root / "monitor.pem", root / "monitor.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    cert.cert_chain_pems[0].write_to_path(str(paths[1]))
    cert.private_key_pem.write_to_path(str(paths[2]))
    return paths


@pytest.fixture(scope="module")
def machines(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoMachines]:
    require_binaries("redis-server", "storescu", "unshare")
    database = postgres_url()
    database_url = next(database)
    root = tmp_path_factory.mktemp("two-machines")
    central = root / "central"
    central.mkdir()
    ca_file, cert, key = _tls(root)
    redis = RedisServer(root / "redis").start()
    scp_port, monitor_port = free_port(), free_port()
    base = write_config(
        central / "base.yaml", data_dir=central / "data", port=scp_port, orthanc=orthanc
    )
    config = write_split_config(
        base,
        central / "config.yaml",
        broker_url=redis.url,
        database_url=database_url,
        worker={"lease_seconds": 3, "visibility_timeout_seconds": 10},
        recovery={"interval_seconds": 1, "requeue_after_seconds": 3},
        monitor={
            "port": monitor_port,
            "token_hash": hash_secret(ADMIN_TOKEN),
            "tls_certificate": str(cert),
            "tls_private_key": str(key),
        },
    )
    stack = TwoMachines(
        root=root,
        redis=redis,
        central_config=config,
        central_data=central / "data",
        remote_root=root / "remote",
        monitor_url=f"https://127.0.0.1:{monitor_port}",
        ca_file=ca_file,
        scp_port=scp_port,
        database_url=database_url,
    )
    stack.remote_root.mkdir()
    try:
        for name in ("scp", "monitor"):
            proc = ServiceProcess(name, [name, "--config", str(config)], root / f"{name}.log")
            stack.processes.append(proc)
        wait_for_port("127.0.0.1", scp_port, timeout=90, proc=stack.processes[0].proc)
        wait_for_port("127.0.0.1", monitor_port, timeout=90, proc=stack.processes[1].proc)
        yield stack
    finally:
        for proc in stack.processes:
            proc.stop()
        redis.stop()
        print(stack.tails())
        database.close()


def _ready(proc: ServiceProcess) -> bool | None:
    assert proc.proc.poll() is None, f"{proc.name} exited\n{proc.tail()}"
    return bool(re.search(r"\S+@\S+ ready\.", proc.log())) or None


def _ran(proc: ServiceProcess) -> set[str]:
    """Jobs this worker claimed (its log line at the start of each job it runs)."""
    return set(re.findall(r"job (\S+): study ", proc.log()))


def _one_result_set(orthanc: Orthanc, study_uid: str) -> None:
    seg = instances_of_modality(orthanc, study_uid, "SEG")
    sr = instances_of_modality(orthanc, study_uid, "SR")
    assert len(seg) == 1 and len(sr) == 1, f"{study_uid}: SEG {seg}, SR {sr}"


def _send(machines: TwoMachines, folder: Path, orthanc: Orthanc, count: int) -> list[str]:
    uids, paths = [], []
    for i in range(count):
        uid, files = write_study(folder / f"study{i}", slices=8)
        uids.append(uid)
        paths += files
    storescu(machines.scp_port, paths, calling=orthanc.aet)
    return uids


def _jobs_by_study(machines: TwoMachines, uids: list[str], states: set[str]) -> Any:
    jobs = {j["study_uid"]: j for j in machines.jobs() if j["study_uid"] in uids}
    if len(jobs) == len(uids) and all(j["state"] in states for j in jobs.values()):
        return jobs
    return None


def test_isolation_hides_the_central_data(machines: TwoMachines) -> None:
    """What the remote worker sees of the central data_dir: an empty folder."""
    assert any(machines.central_data.iterdir())
    seen = subprocess.run(
        [*machines.isolated(), "ls", "-A", str(machines.central_data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert seen.stdout == ""


def test_studies_spread_over_a_local_and_a_remote_worker(
    machines: TwoMachines, orthanc: Orthanc, tmp_path: Path
) -> None:
    local = machines.start("local", machines.central_config)
    remote_config = machines.remote_config("remote1", machines.token("remote1"))
    remote = machines.start("remote1", remote_config, prefix=machines.isolated())
    machines.wait("both workers to be ready", lambda: _ready(local) and _ready(remote))

    uids = _send(machines, tmp_path, orthanc, STUDIES)
    jobs = machines.wait(
        "every study's job to finish",
        lambda: _jobs_by_study(machines, uids, {"done", "failed"}),
    )
    for job in jobs.values():
        assert job["state"] == "done", f"{job['id']}: {job['error']}\n{machines.tails()}"
        assert job["attempts"] == 1
    by_local, by_remote = _ran(local), _ran(remote)
    ids = {j["id"] for j in jobs.values()}
    assert by_local | by_remote == ids and not by_local & by_remote, "each job ran once"
    assert by_local and by_remote, f"not spread: local {by_local}, remote {by_remote}"
    for uid in uids:
        _one_result_set(orthanc, uid)

    # The remote worker's results are where the central node keeps results, and nothing of
    # the studies or results stays on the remote machine.
    remote_data = machines.remote_root / "remote1" / "data"
    for job_id in by_remote:
        assert (machines.central_data / "results" / job_id / "manifest.json").is_file()
    assert not list((remote_data / "remote" / "studies").iterdir())
    assert not list((remote_data / "remote" / "results").iterdir())
    assert "central node" in remote.log() and "knows this worker as remote1" in remote.log()

    # Previews of the remote worker's jobs, over HTTPS from the central monitor.
    with machines.api() as api:
        for job_id in sorted(by_remote)[:2]:
            preview = api.get(f"/api/jobs/{job_id}/preview.png")
            assert preview.status_code == 200, preview.text
            assert preview.content.startswith(b"\x89PNG")
    local.stop()
    remote.stop()


def test_remote_worker_killed_mid_transfer_and_mid_job_loses_nothing(
    machines: TwoMachines, orthanc: Orthanc, tmp_path: Path
) -> None:
    """One study, four remote attempts: killed while downloading, killed while processing,
    failed delivering (its PACS link is down), then retried by the admin and delivered."""
    token = machines.token("remote2")
    markers = machines.remote_root / "markers"
    config = machines.remote_config("remote2", token)
    # Each next worker starts while the previous one holds the job (its lease alive, so
    # nothing reaches the newcomer): a worker's start-up overlaps the previous one's stall.
    crawling = machines.start(
        "remote2-crawling",
        config,
        prefix=machines.isolated(),
        module="tests.support.slow_transfer",
        env={"PA_TEST_CHUNK_SECONDS": "60", "PA_TEST_SLOW_MARKERS": str(markers)},
    )
    machines.wait("the crawling worker to be ready", lambda: _ready(crawling))
    (uid,) = _send(machines, tmp_path, orthanc, 1)

    # 1. Downloads crawl (a minute per file): kill the worker with the study partly fetched.
    machines.wait("the transfer to start", lambda: any(markers.glob("transfer-*")) or None)
    job_id = next(j["id"] for j in machines.jobs() if j["study_uid"] == uid)
    stalling = machines.start(
        "remote2-stalling",
        config,
        prefix=machines.isolated(),
        module="tests.support.slow_worker",
        env={"PA_TEST_SLOW_SECONDS": "600", "PA_TEST_SLOW_MARKERS": str(markers)},
    )
    machines.wait("the stalling worker to be ready", lambda: _ready(stalling))
    crawling.kill()
    staging = machines.remote_root / "remote2" / "data" / "remote" / "studies"
    partial = staging / f"{job_id}.partial"
    assert partial.is_dir() and not (staging / job_id).exists(), "killed with a partial study"
    fetched = len(list(partial.glob("*/*.dcm")))
    assert fetched < 8, f"{fetched} of 8 files fetched: not mid-transfer"
    sealed = machines.central_data / "spool" / "studies" / job_id
    assert len(list(sealed.glob("*/*.dcm"))) == 8, "the central copy is whole"

    # 2. The job comes back (stale lease): this worker stalls in the pipelines; kill it.
    machines.wait("the job to run again", lambda: any(markers.glob("started-*")) or None)
    assert machines.job(job_id)["state"] == "running"
    assert (staging / job_id).is_dir() and not partial.exists(), "fetched whole, then run"
    # 3. Back again on a remote worker whose PACS link is down: results are committed on
    #    the central node, delivery fails, the job fails with the reason.
    cut_off = machines.remote_config(
        "remote2",
        token,
        "no-pacs.yaml",
        destinations={"orthanc": {"ae_title": orthanc.aet, "host": "127.0.0.1",
                                  "port": free_port(), "default": True}},
        delivery={"max_retries": 0, "retry_delay_seconds": 1, "timeout_seconds": 10},
    )  # fmt: skip
    broken = machines.start("remote2-no-pacs", cut_off, prefix=machines.isolated())
    machines.wait("the worker without a PACS to be ready", lambda: _ready(broken))
    stalling.kill()
    assert not (machines.central_data / "results" / job_id / "manifest.json").exists()
    failed = machines.wait(
        "the job to fail delivering",
        lambda: ((j := machines.job(job_id))["state"] == "failed" and j) or None,
    )
    assert "delivery failed" in failed["error"], failed["error"]
    assert failed["attempts"] == 3
    assert (machines.central_data / "results" / job_id / "manifest.json").is_file()
    broken.kill()  # nothing in flight: no need to wait for a warm shutdown
    assert orthanc.study_id_for_uid(uid) is None, "nothing reached the PACS yet"

    with machines.api() as api:
        preview = api.get(f"/api/jobs/{job_id}/preview.png")
        assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
        # 4. The admin retries; a remote worker delivers the committed results.
        retried = api.post(f"/api/jobs/{job_id}/retry")
        assert retried.status_code == 200, retried.text
    good = machines.start("remote2-good", config, prefix=machines.isolated())
    done = machines.wait(
        "the retried job to finish",
        lambda: ((j := machines.job(job_id))["state"] in ("done", "failed") and j) or None,
    )
    assert done["state"] == "done", f"{done['error']}\n{machines.tails()}"
    assert done["attempts"] == 4
    assert f"job {job_id}: reusing results computed by an earlier attempt" in good.log()
    _one_result_set(orthanc, uid)
    good.stop()
    assert not list(staging.iterdir()), "the remote copies are removed"


def test_revoked_worker_cannot_start(machines: TwoMachines) -> None:
    token = machines.token("remote3")
    store = JobStore(machines.database_url)
    tokens = WorkerTokenStore(store.engine)
    assert [t.active for t in tokens.list() if t.name == "remote3"] == [True]
    assert tokens.revoke("remote3")  # what `worker-token revoke` does (its own unit test)
    store.close()
    config = machines.remote_config("remote3", token)
    result = subprocess.run(
        [*machines.isolated(), sys.executable, "-m", "worker", "worker", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refused this worker" in result.stderr and "revoked" in result.stderr
    with machines.api() as api:
        audit = api.get("/api/audit").json()
    assert ("worker-token-create", "remote3") in [(e["action"], e["target"]) for e in audit]
