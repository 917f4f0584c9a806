"""The bad input corpus sent for real through `pacs-annotator up`: each item gets its
documented outcome (README, "Bad input"), the SCP keeps answering and no job is left hanging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.integration.conftest import ANNOTATOR_AET, RunningService
from tests.support.bad_inputs import BadInput, build_corpus
from tests.support.orthanc import Orthanc, wait_for

pytestmark = pytest.mark.integration

OK, CANNOT_UNDERSTAND = 0x0000, 0xC210
REFUSED = "presentation context rejected"

# name -> (C-STORE answers, job state or None for "no job", fragment of the job's reason)
EXPECTED: dict[str, tuple[list[int] | str, str | None, str]] = {
    "truncated file": ([OK] * 6, "failed", "cannot decode pixel data of instance"),
    "non-DICOM bytes": ([CANNOT_UNDERSTAND], None, ""),
    "DICOMDIR": (REFUSED, None, ""),
    "missing pixel data": ([OK] * 4, "failed", "CT Image Storage has no pixel data"),
    "SR (no images)": ([OK], "done", ""),
    "encapsulated PDF": ([OK], "done", ""),
    "mixed orientations": ([OK] * 6, "failed", "mixed ImageOrientationPatient"),
    "1-slice series": ([OK], "done", ""),
    "enhanced multi-frame CT": ([OK], "done", ""),
    "gap too large": ([OK] * 6, "failed", "too large to interpolate"),
    "repeated positions": ([OK] * 8, "failed", "duplicate slice position"),
}


def _sop_class(path: Path) -> str:
    meta = pydicom.filereader.read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID)


def send(port: int, item: BadInput, calling_ae: str) -> list[int] | str:
    """C-STORE each file in one association; the answers, or why nothing could be sent."""
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({_sop_class(p) for p in item.files}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=ANNOTATOR_AET)
    if not assoc.is_established:
        # pynetdicom aborts when the SCP accepted none of the proposed SOP classes.
        return REFUSED
    try:
        statuses = []
        for path in item.files:
            status = assoc.send_c_store(path if item.raw else pydicom.dcmread(path))
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def echo(port: int) -> int:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ANNOTATOR_AET)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def test_bad_input_corpus_gets_its_documented_outcome(
    orthanc: Orthanc, service: RunningService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = build_corpus(tmp_path / "corpus")
    assert {item.name for item in corpus} == set(EXPECTED)
    # Send files byte for byte, so truncated and non-DICOM content reaches the SCP as is.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    quarantine = service.data_dir / "spool" / "quarantine"
    quarantined_before = len(list(quarantine.glob("*.reason.json")))

    answers = {item.name: send(service.port, item, orthanc.aet) for item in corpus}
    for item in corpus:
        assert answers[item.name] == EXPECTED[item.name][0], item.name
    assert echo(service.port) == OK, "the SCP stopped answering after the corpus"

    reasons = [json.loads(p.read_text())["reason"] for p in quarantine.glob("*.reason.json")]
    assert len(reasons) == quarantined_before + 1, "the non-DICOM bytes are kept, with why"

    def final_jobs() -> dict[str, dict[str, Any]] | None:
        jobs = {j["study_uid"]: j for j in service.jobs()}
        wanted = [i for i in corpus if EXPECTED[i.name][1] is not None]
        if all(jobs.get(i.study_uid, {}).get("state") in ("done", "failed") for i in wanted):
            return jobs
        return None

    jobs = wait_for(final_jobs, timeout=300, interval=1.0, message="every corpus job to finish")
    for item in corpus:
        _, state, fragment = EXPECTED[item.name]
        job = jobs.get(item.study_uid)
        if state is None:
            assert job is None, f"{item.name}: no job expected, got {job}"
            continue
        assert job is not None and job["state"] == state, f"{item.name}: {job}"
        if state == "failed":
            assert fragment in (job["error"] or ""), f"{item.name}: {job['error']}"
        else:
            assert job["error"] is None, f"{item.name}: {job['error']}"
    skipped = {
        o["modality"]
        for name in ("SR (no images)", "encapsulated PDF")
        for o in jobs[next(i.study_uid for i in corpus if i.name == name)]["outcomes"]
        if o["status"] == "skipped"
    }
    assert skipped == {"SR", "DOC"}, "image-less objects are stored and skipped"
    single = jobs[next(i.study_uid for i in corpus if i.name == "1-slice series")]
    assert len(single["delivered"]) == 2, "a 1-slice series still gets its SEG and SR"
