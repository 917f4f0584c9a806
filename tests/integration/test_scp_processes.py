"""`scp.processes: 2` through `pacs-annotator up`, with Orthanc and dcmtk storescu sending at once.

Two processes share the SCP port. Many associations at once (Orthanc sending one study,
storescu sending one study over an association per series, and more studies one
association each) land in both; every study still becomes exactly one job with all its
instances, and its results reach Orthanc.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import ANNOTATOR_AET, RunningService, run_up, write_config
from tests.support.orthanc import Orthanc, wait_for
from tests.support.processes import free_port, require_binaries
from tests.support.studies import write_series_study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    require_binaries("redis-server", "storescu")
    root = tmp_path_factory.mktemp("processes")
    port = free_port()
    path = write_config(root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    config = yaml.safe_load(path.read_text())
    config["scp"]["processes"] = 2
    config["scp"]["max_associations"] = 20
    config["scp"]["max_connections_per_address"] = 0  # every sender here is 127.0.0.1
    config["completion"] = {"quiet_seconds": 30, "release_grace_seconds": 2}
    path.write_text(yaml.safe_dump(config))
    with run_up(path, port=port, orthanc=orthanc) as running:
        # The port accepts as soon as the SCP process listens; the receiver follows.
        wait_for(lambda: "in 2 processes" in running.log(), timeout=60, message="both processes")
        yield running


def _storescu(port: int, calling: str, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["storescu", "-aet", calling, "-aec", ANNOTATOR_AET, "127.0.0.1", str(port)]
        + [str(p) for p in files],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _jobs_by_study(service: RunningService) -> dict[str, list[dict[str, Any]]]:
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job in service.jobs():
        jobs.setdefault(job["study_uid"], []).append(job)
    return jobs


def test_concurrent_senders_over_two_processes_give_one_job_per_study(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    from_orthanc, (orthanc_files,) = write_series_study(
        tmp_path / "orthanc", series=1, slices=16, size=64, seed=1
    )
    for path in orthanc_files:
        orthanc.upload(path)
    orthanc_id = orthanc.study_id_for_uid(from_orthanc)
    assert orthanc_id is not None
    per_series, series = write_series_study(
        tmp_path / "per-series", series=6, slices=4, size=64, seed=2
    )
    singles = [
        write_series_study(tmp_path / f"single{n}", series=1, slices=6, size=64, seed=10 + n)
        for n in range(6)
    ]
    expected = {
        from_orthanc: len(orthanc_files),
        per_series: sum(len(files) for files in series),
        **{uid: len(files) for uid, (files,) in singles},
    }

    job = orthanc.store_to_modality("annotator", orthanc_id, synchronous=False)["ID"]
    senders = [_storescu(service.port, "SERIESPACS", files) for files in series]
    senders += [
        _storescu(service.port, f"MODALITY{n}", files) for n, (_, (files,)) in enumerate(singles)
    ]
    assert [s.wait(timeout=180) for s in senders] == [0] * len(senders)
    orthanc.wait_for_job(job, timeout=180)

    def all_finished() -> dict[str, list[dict[str, Any]]] | None:
        jobs = _jobs_by_study(service)
        finished = all(
            any(j["state"] in ("done", "failed") for j in jobs.get(uid, [])) for uid in expected
        )
        return jobs if finished else None

    jobs = wait_for(all_finished, timeout=300, interval=1.0, message="a finished job per study")
    for study_uid, instances in expected.items():
        (only,) = jobs[study_uid]  # one job: never split between the processes
        assert only["instances"] == instances, study_uid
        assert only["state"] == "done", only["error"]
    assert not list((service.data_dir / "spool" / "incoming").iterdir())

    log = service.log()
    # The receiver process logs through the service's own set-up (INFO reaches the log).
    assert re.search(r"SCP receiver process \d+ listening", log)
    # Associations were accepted by both processes: "[pid]" is in every log line.
    accepting = set(re.findall(r"\[(\d+)\] association EVT_ACCEPTED", log))
    assert len(accepting) == 2, accepting
    # Results are in Orthanc: SEG and SR beside the images of the study Orthanc sent.
    modalities = {s["MainDicomTags"].get("Modality") for s in orthanc.series_of_study(orthanc_id)}
    assert {"SEG", "SR"} <= modalities, modalities
