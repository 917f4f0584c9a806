"""Completion with the default settings against real senders: Orthanc and dcmtk storescu.

`pacs-annotator up` runs with the default `completion` section (release grace 5 s, quiet
period 30 s) plus one quiet-only calling AE. A study sent in one association (by Orthanc or
by storescu) becomes a job within the grace after the release; a study sent one
association per series (back to back by either sender, or with pauses by the quiet-only
AE), or over interleaved associations, is one job, never two.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from tests.integration.conftest import ANNOTATOR_AET, RunningService, run_up, write_config
from tests.integration.faults import storescu, write_study
from tests.support.orthanc import Orthanc, wait_for
from tests.support.processes import free_port, require_binaries
from tests.support.studies import write_series_study

pytestmark = pytest.mark.integration

GRACE = 5.0  # completion.release_grace_seconds by default
QUIET = 30.0  # completion.quiet_seconds by default
SLACK = 10.0  # seal, dispatch, and `jobs --json` (a CLI process) on a busy machine
QUIET_ONLY_AE = "SERIESPACS"


@pytest.fixture(scope="module")
def service(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`up` with the default completion settings, and one sender listed as quiet-only."""
    require_binaries("redis-server", "storescu")
    root = tmp_path_factory.mktemp("release")
    port = free_port()
    path = write_config(root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    config = yaml.safe_load(path.read_text())
    config["completion"] = {"quiet_only_aets": [QUIET_ONLY_AE]}  # the rest: defaults
    path.write_text(yaml.safe_dump(config))
    with run_up(path, port=port, orthanc=orthanc) as running:
        yield running


def jobs_of(service: RunningService, study_uid: str) -> list[dict[str, Any]]:
    return [j for j in service.jobs() if j["study_uid"] == study_uid]


def first_job(service: RunningService, study_uid: str, timeout: float) -> dict[str, Any]:
    """The first job of the study, as soon as the dispatcher has recorded it."""
    return wait_for(
        lambda: next(iter(jobs_of(service, study_uid)), None),
        timeout=timeout,
        message=f"a job for study {study_uid}",
    )


def finished_job(service: RunningService, study_uid: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        jobs = jobs_of(service, study_uid)
        return next((j for j in jobs if j["state"] in ("done", "failed")), None)

    return wait_for(finished, timeout=240, interval=0.5, message=f"job of {study_uid} to finish")


def completion_reasons(service: RunningService, study_uid: str) -> list[str]:
    """Why the SCP found each batch of the study complete, from its log."""
    return re.findall(rf"study {re.escape(study_uid)} complete \((\w+)\)", service.log())


def _log_time(line: str) -> datetime:
    """The time of a service log line ("2026-01-01 12:00:00,123 INFO ...")."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def seconds_from_release_to_completion(service: RunningService, study_uid: str) -> float:
    """From the last release logged before the study's completion to that completion."""
    released = None
    for line in service.log().splitlines():
        if "association EVT_RELEASED" in line:
            released = _log_time(line)
        elif f"study {study_uid} complete (released)" in line:
            assert released is not None, "completed on release without a release"
            return (_log_time(line) - released).total_seconds()
    raise AssertionError(f"study {study_uid} did not complete on release")


def upload(orthanc: Orthanc, files: list[Path]) -> str:
    """Put the files into Orthanc; the Orthanc id of their study."""
    for path in files:
        orthanc.upload(path)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    study_id = orthanc.study_id_for_uid(study_uid)
    assert study_id is not None
    return study_id


def test_study_from_orthanc_in_one_association_is_done_within_the_grace(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    study_uid, files = write_study(tmp_path / "study")
    study_id = upload(orthanc, files)

    orthanc.store_to_modality("annotator", study_id)  # returns once its association ended
    sent = time.monotonic()
    job = first_job(service, study_uid, timeout=QUIET)
    queued_after = time.monotonic() - sent
    done = finished_job(service, study_uid)
    done_after = time.monotonic() - sent
    print(f"job queued {queued_after:.1f} s, done {done_after:.1f} s after Orthanc's store")

    # From the service's own log: sealed the grace after the release, plus a poll or two.
    waited = seconds_from_release_to_completion(service, study_uid)
    assert GRACE <= waited <= GRACE + 2.0, f"complete {waited:.2f} s after the release"
    assert queued_after <= GRACE + SLACK < QUIET, f"job only {queued_after:.1f} s after release"
    assert done["state"] == "done", done["error"]
    assert job["instances"] == len(files)
    assert completion_reasons(service, study_uid) == ["released"]
    assert len(jobs_of(service, study_uid)) == 1


def test_one_association_per_series_from_a_quiet_only_ae_is_one_job(
    service: RunningService, tmp_path: Path
) -> None:
    study_uid, series = write_series_study(tmp_path / "study", series=3, slices=8, size=64)

    for n, files in enumerate(series):
        if n:
            time.sleep(GRACE + 2)  # the sender's pause between series: longer than the grace
        storescu(service.port, files, calling=QUIET_ONLY_AE)

    job = first_job(service, study_uid, timeout=QUIET + 60)
    assert job["instances"] == sum(len(files) for files in series)
    assert completion_reasons(service, study_uid) == ["quiet"]
    assert not (service.data_dir / "spool" / "incoming" / study_uid).exists()
    assert len(jobs_of(service, study_uid)) == 1


def test_interleaved_associations_from_orthanc_and_storescu_never_split_a_study(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    x_uid, x_series = write_series_study(tmp_path / "x", series=2, slices=12, size=64, seed=1)
    y_uid, y_series = write_series_study(tmp_path / "y", series=2, slices=12, size=64, seed=5)
    x_id = upload(orthanc, [p for files in x_series for p in files])
    series_ids = [s["ID"] for s in orthanc.series_of_study(x_id)]
    assert len(series_ids) == 2

    # Orthanc sends X one series per job, two jobs at a time (ConcurrentJobs: 2): two
    # associations carrying X, while storescu sends Y in a third one.
    y_sender = subprocess.Popen(
        ["storescu", "-aet", "STORESCU", "-aec", ANNOTATOR_AET, "127.0.0.1", str(service.port)]
        + [str(p) for files in y_series for p in files],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    orthanc_jobs = [
        orthanc.store_to_modality("annotator", series_id, synchronous=False)["ID"]
        for series_id in series_ids
    ]
    assert y_sender.wait(timeout=120) == 0
    for orthanc_job in orthanc_jobs:
        orthanc.wait_for_job(orthanc_job, timeout=120)

    for study_uid, series in ((x_uid, x_series), (y_uid, y_series)):
        job = first_job(service, study_uid, timeout=QUIET + 60)
        assert job["instances"] == sum(len(files) for files in series), study_uid
    # Whatever completed them, nothing of X or Y is left to become a second job.
    for study_uid in (x_uid, y_uid):
        assert not (service.data_dir / "spool" / "incoming" / study_uid).exists()
        assert len(jobs_of(service, study_uid)) == 1
        assert len(completion_reasons(service, study_uid)) == 1


def test_study_from_storescu_in_one_association_is_done_within_the_grace(
    service: RunningService, tmp_path: Path
) -> None:
    """dcmtk storescu sends a two-series study in one association: one job, on release."""
    study_uid, series = write_series_study(tmp_path / "study", series=2, slices=10, size=64)
    files = [p for paths in series for p in paths]

    storescu(service.port, files, calling="STORESCU")  # returns once it has released
    job = first_job(service, study_uid, timeout=QUIET)

    print(f"complete {seconds_from_release_to_completion(service, study_uid):.2f} s after release")
    assert job["instances"] == len(files)
    assert finished_job(service, study_uid)["state"] == "done"
    assert completion_reasons(service, study_uid) == ["released"]
    assert len(jobs_of(service, study_uid)) == 1


@pytest.mark.parametrize("sender", ["orthanc", "storescu"])
def test_one_association_per_series_sent_back_to_back_is_one_job(
    orthanc: Orthanc, service: RunningService, tmp_path: Path, sender: str
) -> None:
    """A sender that opens the next series' association within the grace: one job."""
    study_uid, series = write_series_study(tmp_path / "study", series=3, slices=6, size=64)
    if sender == "orthanc":
        study_id = upload(orthanc, [p for files in series for p in files])
        series_ids = [s["ID"] for s in orthanc.series_of_study(study_id)]
        assert len(series_ids) == 3
        for series_id in series_ids:  # one synchronous Orthanc job, one association, each
            orthanc.store_to_modality("annotator", series_id)
    else:
        for files in series:
            storescu(service.port, files, calling="STORESCU")

    job = first_job(service, study_uid, timeout=QUIET + 60)
    assert job["instances"] == sum(len(files) for files in series)
    assert completion_reasons(service, study_uid) == ["released"]
    assert not (service.data_dir / "spool" / "incoming" / study_uid).exists()
    assert len(jobs_of(service, study_uid)) == 1
