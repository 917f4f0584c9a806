"""A real Orthanc with DICOMweb, shared by the pull and poll tests, and the world around it.

The job store (SQLite) and spool are real; only the broker is a list of job ids.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from scu_scp.spool import Spool
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.phantom import make_ct_phantom
from worker.config import Settings, load_settings
from worker.jobs.dispatch import Dispatcher
from worker.jobs.store import JobStore

USERS = {"annotator": "right-password"}
SOURCE = {"auth": {"type": "basic", "username": "annotator", "password": "right-password"}}


@pytest.fixture(scope="package")
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
