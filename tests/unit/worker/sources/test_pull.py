"""Pulling studies by WADO-RS into the spool, against a real Orthanc with DICOMweb.

The job store (SQLite), spool and Orthanc are real; only the broker is a list of job ids.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pydicom
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from tests.support.orthanc import Orthanc
from tests.support.processes import require_binaries
from tests.unit.worker.sources.conftest import SOURCE, upload_study, world
from worker.cli import main
from worker.config import DEFAULT_QUEUE, load_settings
from worker.jobs.store import JobState, JobStore
from worker.monitor.app import create_monitor_app
from worker.monitor.auth import hash_secret
from worker.service.embedded_redis import EmbeddedRedis
from worker.sources.pull import PullError, pull_study


def test_pull_spools_the_study_and_queues_a_job_from_the_source(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    w = world(tmp_path, orthanc)
    study_uid, count = upload_study(orthanc, tmp_path / "in", "PULL1")
    job = pull_study(w.settings, "web", study_uid, spool=w.spool, dispatcher=w.dispatcher)
    assert job.state is JobState.QUEUED and w.queued == [job.id]
    assert (job.calling_ae, job.instance_count, job.accession_number) == ("web", count, "PULL1")
    sealed = w.spool.open_sealed(job.id)
    files = w.spool.instance_paths(sealed)
    assert len(files) == count
    assert {str(pydicom.dcmread(p).StudyInstanceUID) for p in files} == {study_uid}


def test_pull_errors_name_the_source_and_http_status(tmp_path: Path, orthanc: Orthanc) -> None:
    w = world(tmp_path, orthanc)
    with pytest.raises(PullError, match=r"404 Not Found from http://127\.0\.0\.1"):
        pull_study(w.settings, "web", generate_uid(), spool=w.spool, dispatcher=w.dispatcher)
    with pytest.raises(PullError, match="not a valid DICOM UID"):
        pull_study(w.settings, "web", "1.2.x/../..", spool=w.spool, dispatcher=w.dispatcher)
    with pytest.raises(PullError, match="unknown source 'nope'"):
        pull_study(w.settings, "nope", generate_uid(), spool=w.spool, dispatcher=w.dispatcher)
    wrong = world(tmp_path / "wrong", orthanc, password="wrong-password")
    study_uid, _ = upload_study(orthanc, tmp_path / "in", "AUTH1")
    with pytest.raises(PullError, match=r"source web: WADO-RS of study .*: 401 Unauthorized"):
        pull_study(wrong.settings, "web", study_uid, spool=wrong.spool, dispatcher=wrong.dispatcher)
    assert w.queued == [] and wrong.queued == []
    for spool in (w.spool, wrong.spool):  # nothing half-fetched is left to look received
        assert list(spool.incoming.iterdir()) == []
        assert list((spool.root / "pulls").iterdir()) == []
        assert spool.sealed() == []


def test_annotate_command_without_a_broker_records_the_job(
    tmp_path: Path, orthanc: Orthanc, capsys: pytest.CaptureFixture[str]
) -> None:
    """No broker_url and no running `up`: the job waits as received for the service."""
    w = world(tmp_path, orthanc)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(json.loads(w.settings.model_dump_json(exclude={"sources", "routing"})))
        + yaml.safe_dump({"sources": {"web": {**SOURCE, "url": orthanc.dicomweb_url}}})
    )
    study_uid, count = upload_study(orthanc, tmp_path / "in", "CLI1")
    assert main(["annotate", "--config", str(config), "--source", "nope", "--study", "1.2"]) == 2
    assert "unknown source 'nope' (known: web)" in capsys.readouterr().err
    assert main(["annotate", "--config", str(config), "--source", "web", "--study", "1.2"]) == 1
    assert "404 Not Found" in capsys.readouterr().err
    assert main(["annotate", "--config", str(config), "--source", "web", "--study", study_uid]) == 0
    assert "the service queues it" in capsys.readouterr().out
    [job] = JobStore(w.settings.effective_database_url).list(study_uid=study_uid)
    assert (job.state, job.instance_count) == (JobState.RECEIVED, count)


def test_annotate_through_the_monitor_api_pulls_and_queues_the_study(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    require_binaries("redis-server")
    study_uid, count = upload_study(orthanc, tmp_path / "study", "API1")
    token = secrets.token_urlsafe(16)
    auth = {"Authorization": f"Bearer {token}"}
    url = f"/api/sources/web/studies/{study_uid}/annotate"
    with EmbeddedRedis(tmp_path / "redis") as broker:
        settings = load_settings(
            None,
            data_dir=tmp_path / "data",
            broker_url=broker.url,
            destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
            sources={"web": {"url": orthanc.dicomweb_url, **SOURCE, "deliver_to": ["pacs"]}},
            monitor={"token_hash": hash_secret(token)},
        )
        client = redis.Redis.from_url(broker.url)
        with TestClient(create_monitor_app(settings)) as api:
            assert api.post(url).status_code == 401
            listed = api.get("/api/sources", headers=auth)
            assert listed.json() == [{"name": "web", "url": orthanc.dicomweb_url, "polled": False}]
            assert "right-password" not in listed.text

            answer = api.post(url, headers=auth)
            assert answer.status_code == 200, answer.text
            job = answer.json()
            assert (job["state"], job["study_uid"]) == ("queued", study_uid)
            assert (job["instances"], job["calling_ae"]) == (count, "web")
            assert client.llen(DEFAULT_QUEUE) == 1
            audit = api.get("/api/audit", headers=auth).json()[0]
            assert (audit["actor"], audit["action"], audit["target"]) == (
                "token",
                "annotate",
                study_uid,
            )

            missing = api.post(f"/api/sources/web/studies/{generate_uid()}/annotate", headers=auth)
            assert missing.status_code == 502 and "404 Not Found" in missing.json()["detail"]
            unknown = api.post(f"/api/sources/nope/studies/{study_uid}/annotate", headers=auth)
            assert unknown.status_code == 404
            assert client.llen(DEFAULT_QUEUE) == 1
        client.close()
