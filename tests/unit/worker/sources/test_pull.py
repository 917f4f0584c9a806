"""Pulling studies by WADO-RS and polling by QIDO-RS, against a real Orthanc with DICOMweb.

The job store (SQLite), spool and Orthanc are real; only the broker is a list of job ids.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from scu_scp.spool import Spool
from tests.support.orthanc import Orthanc, require_orthanc, wait_for
from tests.support.phantom import make_ct_phantom
from tests.support.processes import require_binaries
from worker.cli import main
from worker.config import DEFAULT_QUEUE, Settings, load_settings
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import JobState, JobStore
from worker.monitor.app import create_monitor_app
from worker.monitor.auth import hash_secret
from worker.service.embedded_redis import EmbeddedRedis
from worker.sources.poll import StudyPoller
from worker.sources.pull import PullError, pull_study

USERS = {"annotator": "right-password"}
SOURCE = {"auth": {"type": "basic", "username": "annotator", "password": "right-password"}}


@pytest.fixture(scope="module")
def orthanc() -> Iterator[Orthanc]:
    require_orthanc()
    with Orthanc(users=USERS, graceful_stop=False) as server:
        yield server


def upload_study(orthanc: Orthanc, folder: Path, accession: str) -> tuple[str, int]:
    """A small phantom study with a fresh Study UID; returns (study UID, instance count)."""
    phantom = make_ct_phantom(slices=6, size=32, study_uid=generate_uid())
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(phantom.datasets):
        ds.AccessionNumber = accession
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    return str(phantom.datasets[0].StudyInstanceUID), len(phantom.datasets)


class World:
    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix  # accession numbers the poll filter matches
        self.store = JobStore(settings.effective_database_url)
        self.spool = Spool(settings.spool_dir)
        self.queued: list[str] = []
        self.dispatcher = Dispatcher(self.store, self.spool, self.queued.append)


def world(tmp_path: Path, orthanc: Orthanc, password: str = "right-password") -> World:
    prefix = secrets.token_hex(4).upper()
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        sources={
            "web": {
                "url": orthanc.dicomweb_url,
                "auth": {"type": "basic", "username": "annotator", "password": password},
                "deliver_to": ["pacs"],
                "poll": {
                    "interval_seconds": 0.2,
                    "modality": "CT",
                    "study_date_days": None,
                    "filters": {"AccessionNumber": f"{prefix}*"},
                },
            }
        },
    )
    (tmp_path / "data").mkdir(parents=True)
    return World(settings, prefix)


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


def test_poller_queues_each_matching_study_once(tmp_path: Path, orthanc: Orthanc) -> None:
    w = world(tmp_path, orthanc)
    first, _ = upload_study(orthanc, tmp_path / "a", f"{w.prefix}A")
    upload_study(orthanc, tmp_path / "other", "NOTMINE")  # outside the poll filter
    poller = StudyPoller(w.settings, w.store, w.spool, w.dispatcher)
    jobs = poller.poll_once("web")
    assert [j.study_uid for j in jobs] == [first]
    assert poller.poll_once("web") == []  # already has a job: not again
    second, _ = upload_study(orthanc, tmp_path / "b", f"{w.prefix}B")
    assert [j.study_uid for j in poller.poll_once("web")] == [second]
    assert len(w.queued) == 2


def test_poller_thread_polls_until_stopped(tmp_path: Path, orthanc: Orthanc) -> None:
    w = world(tmp_path, orthanc)
    study_uid, _ = upload_study(orthanc, tmp_path / "a", f"{w.prefix}T")
    poller = StudyPoller(w.settings, w.store, w.spool, w.dispatcher)
    poller.start()
    try:
        wait_for(lambda: w.queued, timeout=60, message="the poller to queue the study")
        rounds = poller.rounds
        wait_for(lambda: poller.rounds >= rounds + 3, timeout=60, message="three more polls")
    finally:
        poller.stop()
    assert [j.study_uid for j in w.store.list(study_uid=study_uid)] == [study_uid]
    assert len(w.queued) == 1


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
