"""Faults injected for real: the SCP SIGKILLed mid-association, the destination PACS down.

The service runs as separate `pacs-annotator scp` and `worker` processes around a real
redis-server; the PACS is a real Orthanc; studies arrive from pynetdicom and dcmtk storescu.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.integration.conftest import ANNOTATOR_AET
from tests.integration.faults import SplitStack, split_stacks, storescu, write_study
from tests.integration.test_round_trip import instances_of_modality
from tests.support.orthanc import Orthanc
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def make_stack(orthanc: Orthanc, tmp_path: Path) -> Iterator[Callable[..., SplitStack]]:
    yield from split_stacks(orthanc, tmp_path)


def _finished(job: dict[str, Any]) -> bool:
    return job["state"] in ("done", "failed")


def _retry_number(job: dict[str, Any]) -> int | None:
    """N of "(retry N in S s)", the note a job waiting for its delivery retry carries."""
    found = re.search(r"\(retry (\d+) in ", job["error"] or "")
    return int(found.group(1)) if found else None


def _one_result_set(pacs: Orthanc, study_uid: str, job: dict[str, Any]) -> None:
    seg = instances_of_modality(pacs, study_uid, "SEG")
    sr = instances_of_modality(pacs, study_uid, "SR")
    assert len(seg) == 1 and len(sr) == 1, f"expected one SEG and one SR, got {seg} / {sr}"
    assert len(job["delivered"]) == 2


def test_scp_killed_mid_association_keeps_every_acknowledged_instance(
    orthanc: Orthanc, make_stack: Callable[..., SplitStack], tmp_path: Path
) -> None:
    # The restarted SCP starts the quiet period of each study it resumes from the spool
    # again as it starts; a quiet period well above the gap from then to the resend's first
    # instance (under a second here) and between its instances: the resend joins the study.
    stack = make_stack(completion={"quiet_seconds": 8})
    scp = stack.start_scp()
    stack.start_worker()
    study_uid, paths = write_study(tmp_path / "study")

    ae = AE(ae_title=orthanc.aet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", stack.port, ae_title=ANNOTATOR_AET)
    assert assoc.is_established
    acknowledged: list[str] = []
    for path in paths[:10]:
        ds = pydicom.dcmread(path)
        status = assoc.send_c_store(ds)
        assert status and status.Status == 0x0000
        acknowledged.append(str(ds.SOPInstanceUID))

    scp.kill()  # SIGKILL in the middle of the association
    try:
        status = assoc.send_c_store(pydicom.dcmread(paths[10]))
        assert not status or status.Status != 0x0000, "a dead SCP cannot acknowledge"
    except RuntimeError:
        pass  # pynetdicom noticed the abort first
    finally:
        assoc.abort()

    incoming = stack.data_dir / "spool" / "incoming" / study_uid
    on_disk = {p.stem for p in incoming.rglob("*.dcm")}
    missing = set(acknowledged) - on_disk
    assert not missing, f"acknowledged before the kill but not in the spool: {missing}"
    for path in incoming.rglob("*.dcm"):
        pydicom.dcmread(path)  # complete, readable files only

    # Restarted, and the PACS resends the whole study (it saw the association fail).
    stack.start_scp()
    storescu(stack.port, paths, calling=orthanc.aet)
    job = stack.wait_job(study_uid, _finished, "the study's job to finish")
    assert job["state"] == "done", f"{job['error']}\n{stack.tails()}"
    assert job["instances"] == len(paths)
    assert len(stack.jobs_of(study_uid)) == 1, "one study, one job, one result set"
    _one_result_set(orthanc, study_uid, job)


def test_destination_down_retries_with_backoff_then_delivers_or_fails_with_reason(
    make_stack: Callable[..., SplitStack], tmp_path: Path
) -> None:
    dicom_port, http_port = free_port(), free_port()
    late = Orthanc(
        aet="LATEPACS",
        workdir=tmp_path / "late-pacs",
        extra_config={"DicomPort": dicom_port, "HttpPort": http_port},
    )
    destination = {"ae_title": "LATEPACS", "host": "127.0.0.1", "port": dicom_port}
    stack = make_stack(
        destinations={"late": destination},
        delivery={"max_retries": 4, "retry_delay_seconds": 1, "timeout_seconds": 10},
        worker={"visibility_timeout_seconds": 120},
    )
    stack.start_scp()
    worker = stack.start_worker()
    try:
        # The PACS is down when the results are ready: the job waits and says why.
        study_uid, paths = write_study(tmp_path / "first")
        storescu(stack.port, paths, calling="LATEPACS")
        stack.wait_job(
            study_uid,
            # Seen during the 2 s or 4 s wait (the CLI that reads jobs is slow to start);
            # the 8 s wait after that leaves the PACS time to come back.
            lambda j: j["state"] == "queued" and _retry_number(j) in (2, 3),
            "two failed deliveries",
        )
        late.start()  # back: the next retry delivers
        job = stack.wait_job(study_uid, _finished, "delivery once the PACS is back")
        assert job["state"] == "done", f"{job['error']}\n{stack.tails()}"
        assert job["error"] is None
        _one_result_set(late, study_uid, job)
        log = worker.log()
        for delay in (1, 2):
            assert f"{job['id']}: destination late" in log
            assert f"retrying in {delay} s" in log, f"no backoff step of {delay} s"

        # Down for good: after 1 + max_retries attempts the job fails with the reason.
        late.stop()
        study_uid, paths = write_study(tmp_path / "second")
        storescu(stack.port, paths, calling="LATEPACS")
        job = stack.wait_job(study_uid, _finished, "the retry budget to run out")
        assert job["state"] == "failed"
        assert job["error"].startswith("delivery failed after 5 attempts: destination late:")
        assert "retrying in 8 s" in worker.log()

        # The PACS is back; the admin retries the failed job, which delivers its saved results.
        late.start()
        retried = subprocess.run(
            [sys.executable, "-m", "worker", "retry", job["id"], "--config", str(stack.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert retried.returncode == 0, retried.stderr
        job = stack.wait_job(
            study_uid, lambda j: _finished(j) and j["attempts"] > 5, "the admin's retry"
        )
        assert job["state"] == "done", f"{job['error']}\n{stack.tails()}"
        _one_result_set(late, study_uid, job)
    finally:
        late.stop()
