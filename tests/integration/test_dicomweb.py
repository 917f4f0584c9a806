"""DICOMweb both ways against real Orthancs, through `pacs-annotator up` and its CLI.

``web`` is an archive reached only by DICOMweb (basic auth on): studies are pulled from it by
WADO-RS (``annotate --source``, and the QIDO-RS poller), results go back to it by STOW-RS.
``orthanc`` is a DIMSE PACS: a delivery rule sends the same job's results there by C-STORE.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from tests.integration.conftest import ANNOTATOR_AET, RunningService, run_up
from tests.integration.test_round_trip import instances_of_modality
from tests.support.dicom_validate import dciodvfy_errors, validation_errors
from tests.support.orthanc import Orthanc, require_orthanc, wait_for
from tests.support.phantom import make_ct_phantom
from tests.support.processes import (
    free_port,
    require_binaries,
)

pytestmark = pytest.mark.integration

USER, PASSWORD = "annotator", "right-password"
SECRET_ENV = "PACS_ANNOTATOR_DESTINATIONS__WEB_OUT__AUTH__PASSWORD"
JOB_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def web() -> Iterator[Orthanc]:
    require_orthanc()
    with Orthanc(aet="WEBARCHIVE", users={USER: PASSWORD}, graceful_stop=False) as server:
        yield server


def write_config(root: Path, port: int, web: Orthanc, pacs: Orthanc) -> Path:
    auth = {"type": "basic", "username": USER, "password": "set-from-environment"}
    config = {
        "data_dir": str(root / "data"),
        "scp": {"ae_title": ANNOTATOR_AET, "host": "127.0.0.1", "port": port},
        "completion": {"quiet_seconds": 1.0},
        "destinations": {
            "pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
            "web_out": {"type": "dicomweb", "url": web.dicomweb_url, "auth": auth},
        },
        "sources": {
            "web": {
                "url": web.dicomweb_url,
                "auth": {"type": "basic", "username": USER, "password": PASSWORD},
                "poll": {
                    "interval_seconds": 1,
                    "modality": "CT",
                    "study_date_days": None,
                    "filters": {"AccessionNumber": "POLL*"},
                },
            }
        },
        "delivery": {
            "max_retries": 1,
            "retry_delay_seconds": 1,
            "timeout_seconds": 30,
            "rules": [{"source": "web", "to": ["pacs", "web_out"]}],
        },
        # `up` starts the monitor too: never on the fixed default port (8080).
        "monitor": {"port": free_port()},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def running_service(
    root: Path, web: Orthanc, pacs: Orthanc, password: str
) -> Iterator[RunningService]:
    """`pacs-annotator up` with the STOW-RS password given through the environment."""
    require_binaries("redis-server")
    port = free_port()
    config = write_config(root, port, web, pacs)
    env = dict(os.environ, **{SECRET_ENV: password})
    with run_up(config, port=port, env=env, timeout=90) as service:
        yield service


def upload_phantom(web: Orthanc, folder: Path, accession: str) -> str:
    phantom = make_ct_phantom(slices=16, size=64, pixel_spacing=5.5, study_uid=generate_uid())
    folder.mkdir(parents=True)
    for i, ds in enumerate(phantom.datasets):
        ds.AccessionNumber = accession
        path = folder / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        web.upload(path)
    return str(phantom.datasets[0].StudyInstanceUID)


def final_job(service: RunningService, study_uid: str, exclude: set[str]) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        for job in service.jobs():
            mine = job["study_uid"] == study_uid and job["id"] not in exclude
            if mine and job["state"] in ("done", "failed"):
                return job
        return None

    return wait_for(finished, timeout=JOB_TIMEOUT, interval=0.5, message=f"job of {study_uid}")


def annotate(service: RunningService, study_uid: str) -> dict[str, Any]:
    before = {j["id"] for j in service.jobs()}
    result = service.cli("annotate", "--source", "web", "--study", study_uid)
    assert result.returncode == 0, result.stderr
    assert "queued" in result.stdout, result.stdout
    return final_job(service, study_uid, before)


def qido_series(web: Orthanc, study_uid: str, modality: str) -> list[dict[str, Any]]:
    """QIDO-RS, as any DICOMweb viewer would look for our results."""
    found: list[dict[str, Any]] = web.get_json(
        f"/dicom-web/studies/{study_uid}/series", params={"Modality": modality}
    )
    return found


def check_results_by_dicomweb(
    web: Orthanc, study_uid: str, tmp_path: Path, *, all_validators: bool = False
) -> None:
    """One SEG and one SR in the archive (found by QIDO-RS, fetched by WADO-RS), both valid
    for dciodvfy, and with ``all_validators`` for PixelMed and dcmqi too (seconds more)."""
    paths = []
    for modality in ("SEG", "SR"):
        series = qido_series(web, study_uid, modality)
        assert len(series) == 1, f"{modality} series by QIDO-RS: {series}"
        series_uid = series[0]["0020000E"]["Value"][0]
        instances = web.get_json(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances")
        assert len(instances) == 1
        sop_uid = instances[0]["00080018"]["Value"][0]
        match = web.post_json("/tools/lookup", sop_uid)
        path = web.download_instance(match[0]["ID"], tmp_path / f"{modality}.dcm")
        ds = pydicom.dcmread(path)
        assert ds.Modality == modality and ds.StudyInstanceUID == study_uid
        assert dciodvfy_errors(path) == []
        paths.append(path)
    if all_validators:
        errors = validation_errors(paths, tmp_path / "validation")
        assert errors == [], "\n".join(errors)


def test_pull_annotate_and_deliver_by_stow_and_c_store_with_basic_auth(
    web: Orthanc, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid = upload_phantom(web, tmp_path / "study", "PULL1")

    # Wrong STOW-RS password: the job retries, then fails saying what the archive answered.
    root = tmp_path / "service"
    with running_service(root, web, orthanc, "wrong-password") as service:
        failed = annotate(service, study_uid)
    assert failed["state"] == "failed"
    assert failed["calling_ae"] == "web"
    expected = f"destination web_out: STOW-RS: 401 Unauthorized from {web.dicomweb_url}/studies"
    assert expected in (failed["error"] or ""), failed["error"]
    assert "delivery failed after 2 attempts" in failed["error"]
    assert not qido_series(web, study_uid, "SEG")

    # Config fixed (the secret from the environment), service restarted on the same data:
    # the admin retries the failed job and it delivers its saved results.
    with running_service(root, web, orthanc, PASSWORD) as service:
        retried = service.cli("retry", failed["id"])
        assert retried.returncode == 0, retried.stderr
        job = final_job(service, study_uid, exclude=set())
        assert job["id"] == failed["id"]
        assert job["state"] == "done", f"{job['error']}\n{service.log()[-4000:]}"
        assert job["attempts"] >= 2
        assert "wrong-password" not in service.log() and PASSWORD not in service.log()
    destinations = sorted({d["destination"] for d in job["delivered"]})
    assert destinations == ["pacs", "web_out"]
    assert len(job["delivered"]) == 4  # SEG and SR to each
    check_results_by_dicomweb(web, study_uid, tmp_path, all_validators=True)
    assert len(instances_of_modality(orthanc, study_uid, "SEG")) == 1
    assert len(instances_of_modality(orthanc, study_uid, "SR")) == 1


def test_poller_queues_a_new_study_exactly_once(
    web: Orthanc, orthanc: Orthanc, tmp_path: Path
) -> None:
    with running_service(tmp_path / "svc", web, orthanc, PASSWORD) as service:
        study_uid = upload_phantom(web, tmp_path / "study", "POLL1")
        job = final_job(service, study_uid, set())
        assert job["state"] == "done", f"{job['error']}\n{service.log()[-4000:]}"
        assert job["calling_ae"] == "web"

        # The study still matches the poll filter (now with our SEG and SR in it): later
        # polls must see it and leave it alone.
        def polls() -> int:
            return service.log().count("poll of web: ")

        seen = polls()
        wait_for(lambda: polls() >= seen + 3, timeout=60, message="three more polls")
        jobs = [j for j in service.jobs() if j["study_uid"] == study_uid]
        assert [j["id"] for j in jobs] == [job["id"]]
    check_results_by_dicomweb(web, study_uid, tmp_path)
