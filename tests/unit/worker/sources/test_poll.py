"""Polling DICOMweb sources by QIDO-RS: each matching study with no job yet is pulled once.

The first tests put fakes behind the network seams (``search_studies``, ``pull_study``) over a
real SQLite job store; the last ones poll a real Orthanc with DICOMweb.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import pytest

from scu_scp.dicomweb import DicomwebEndpoint, FetchError
from scu_scp.spool import Spool
from tests.support.orthanc import Orthanc, wait_for
from tests.unit.worker.sources.conftest import upload_study, world
from worker.config import PollSettings, Settings, load_settings
from worker.jobs.broker import EnqueueError
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import Job, JobStore, utc_now
from worker.sources import poll
from worker.sources.poll import StudyPoller, qido_filters
from worker.sources.pull import PullError

TODAY = date(2026, 3, 1)


def test_qido_filters_cover_modality_date_window_and_extras() -> None:
    settings = PollSettings(modality="CT", study_date_days=2, filters={"AccessionNumber": "A*"})
    assert qido_filters(settings, TODAY) == {
        "ModalitiesInStudy": "CT",
        "StudyDate": "20260227-20260301",
        "AccessionNumber": "A*",
    }
    assert qido_filters(PollSettings(study_date_days=0), TODAY) == {
        "StudyDate": "20260301-20260301"
    }
    assert qido_filters(PollSettings(study_date_days=None), TODAY) == {}


class FakeArchive:
    """QIDO-RS answers and WADO-RS pulls behind the poller's seams; pulls record a job."""

    def __init__(self, store: JobStore, uids: list[str]) -> None:
        self.store = store
        self.uids = uids
        self.searches: list[tuple[str, dict[str, str]]] = []
        self.pulls: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.record_before_failing: set[str] = set()  # recorded as received, then not queued

    def search(self, endpoint: DicomwebEndpoint, filters: Mapping[str, str]) -> list[str]:
        self.searches.append((endpoint.url, dict(filters)))
        return list(self.uids)

    def _record(self, source: str, uid: str) -> Job:
        return self.store.create(
            job_id=f"job-{uid}",
            study_uid=uid,
            accession_number="",
            calling_ae=source,
            spool_path="",
            instance_count=1,
            received_at=utc_now(),
        )

    def pull(self, settings: Settings, source: str, uid: str, **_: object) -> Job:
        self.pulls.append(uid)
        if uid in self.record_before_failing:
            self._record(source, uid)
        if uid in self.fail:
            raise self.fail[uid]
        return self._record(source, uid)


@pytest.fixture
def poller_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[StudyPoller, FakeArchive, JobStore]:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        destinations={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        sources={
            "web": {
                "url": "https://archive.example/dicom-web",
                "deliver_to": ["pacs"],
                "poll": {"interval_seconds": 0.01, "modality": "CT", "study_date_days": 1},
            },
            "manual": {"url": "https://other.example/dicom-web"},  # pulled on demand only
        },
    )
    store = JobStore(settings.effective_database_url)
    spool = Spool(settings.spool_dir)
    archive = FakeArchive(store, [])
    monkeypatch.setattr(poll, "search_studies", archive.search)
    monkeypatch.setattr(poll, "pull_study", archive.pull)
    poller = StudyPoller(
        settings, store, spool, Dispatcher(store, spool, lambda _id: None), today=lambda: TODAY
    )
    return poller, archive, store


def test_only_sources_with_poll_set_are_polled(
    poller_world: tuple[StudyPoller, FakeArchive, JobStore],
) -> None:
    poller, _, _ = poller_world
    assert list(poller.polled) == ["web"]


def test_a_poll_searches_the_date_window_and_pulls_only_studies_without_a_job(
    poller_world: tuple[StudyPoller, FakeArchive, JobStore],
) -> None:
    poller, archive, store = poller_world
    archive.uids = ["1.2.3", "1.2.4"]
    archive._record("ORTHANC", "1.2.3")  # already pushed by C-STORE: not pulled again
    jobs = poller.poll_once("web")
    assert archive.searches == [
        (
            "https://archive.example/dicom-web",
            {"ModalitiesInStudy": "CT", "StudyDate": "20260228-20260301"},
        )
    ]
    assert archive.pulls == ["1.2.4"]
    assert [(j.study_uid, j.calling_ae) for j in jobs] == [("1.2.4", "web")]
    assert poller.poll_once("web") == []  # both have a job now
    assert archive.pulls == ["1.2.4"]
    assert len(store.list()) == 2


def test_a_failed_pull_is_tried_next_round_and_an_unqueued_job_waits_for_recovery(
    poller_world: tuple[StudyPoller, FakeArchive, JobStore],
) -> None:
    poller, archive, store = poller_world
    archive.uids = ["1.1", "1.2", "1.3"]
    archive.fail = {"1.1": PullError("source web: 503"), "1.2": EnqueueError("broker down")}
    archive.record_before_failing = {"1.2"}  # as pull_study does: recorded, then not queued
    jobs = poller.poll_once("web")
    assert archive.pulls == ["1.1", "1.2", "1.3"]  # one failure does not stop the round
    assert [j.study_uid for j in jobs] == ["1.3"]
    archive.fail = {}
    assert [j.study_uid for j in poller.poll_once("web")] == ["1.1"]
    assert archive.pulls == ["1.1", "1.2", "1.3", "1.1"]  # 1.2 has its job: the service queues it
    assert {j.study_uid for j in store.list()} == {"1.1", "1.2", "1.3"}


def test_the_polling_thread_survives_a_failed_search_and_stops(
    poller_world: tuple[StudyPoller, FakeArchive, JobStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    poller, archive, _ = poller_world
    calls: list[str] = []
    third = threading.Event()

    def flaky_search(endpoint: DicomwebEndpoint, filters: Mapping[str, str]) -> list[str]:
        calls.append(endpoint.url)
        if len(calls) >= 3:
            third.set()
        if len(calls) == 1:
            raise FetchError("QIDO-RS: 503 Service Unavailable from https://archive.example")
        return ["2.5"]

    monkeypatch.setattr(poll, "search_studies", flaky_search)
    poller.start()
    try:
        assert third.wait(timeout=30), "the thread stopped polling after a failed search"
    finally:
        poller.stop()
    done = len(calls)
    assert poller.rounds >= 2
    assert archive.pulls == ["2.5"]  # pulled once, after the failed round
    assert set(calls) == {"https://archive.example/dicom-web"}  # never the unpolled source
    poller.stop()  # stopping twice is harmless, and no thread polls any more
    assert len(calls) == done


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
