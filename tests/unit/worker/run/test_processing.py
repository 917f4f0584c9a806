"""Running jobs with the real pipelines and spool, and a fake PACS behind the sender seam."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, SegmentationStorage
from pynetdicom import AE, evt

from pipelines.registry import builtin_pipelines
from scu_scp.models import DeliveryResult, DicomNode
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, make_settings, spool_study
from tests.support.phantom import make_ct_phantom
from tests.support.storescp import dataset_bytes
from worker.config import load_settings
from worker.delivery.deliver import TransientDeliveryError
from worker.delivery.senders import make_sender
from worker.jobs.store import JobState, JobStore
from worker.run import processing
from worker.run.processing import Runtime, process_job
from worker.run.tasks import register_tasks


@pytest.fixture
def pacs() -> FakePacs:
    return FakePacs()


@pytest.fixture
def runtime(tmp_path: Path, pacs: FakePacs) -> Runtime:
    settings = make_settings(tmp_path)
    return Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines=dict(builtin_pipelines()),
        send=pacs,
    )


@pytest.fixture(scope="module")
def phantom() -> list[Dataset]:
    return make_ct_phantom(slices=16, size=64, pixel_spacing=5.5).datasets


def test_job_runs_delivers_and_records_results(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    job_id = spool_study(runtime, phantom)
    job = process_job(runtime, job_id)
    assert job.state is JobState.DONE, job.error
    assert job.pipelines and job.attempts == 1
    assert [d["sop_instance_uid"] for d in job.delivered] == [uid for _, uid in pacs.received]
    assert {ae for ae, _ in pacs.received} == {"ORTHANC"}
    assert [o["status"] for o in job.outcomes].count("done") >= 1
    saved = runtime.settings.results_dir / job_id
    assert {p.stem for p in saved.glob("*.dcm")} == {uid for _, uid in pacs.received}
    # A redelivered message for a finished job changes nothing.
    assert process_job(runtime, job_id).delivered == job.delivered
    assert len(pacs.received) == len(job.delivered)


def test_same_input_twice_gives_the_same_result_uids(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    first = process_job(runtime, spool_study(runtime, phantom))
    second = process_job(runtime, spool_study(runtime, phantom))
    assert first.id != second.id
    assert [d["sop_instance_uid"] for d in first.delivered] == [
        d["sop_instance_uid"] for d in second.delivered
    ]


def test_pacs_down_raises_transient_and_retry_reuses_results(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = spool_study(runtime, phantom)
    pacs.down = True
    with pytest.raises(TransientDeliveryError, match="connection refused"):
        process_job(runtime, job_id)
    waiting = runtime.store.get(job_id)  # released for the retry, with the reason
    assert waiting.state is JobState.QUEUED and "connection refused" in (waiting.error or "")

    def must_not_run(*_: Any, **__: Any) -> None:
        raise AssertionError("results were computed again instead of reused")

    monkeypatch.setattr(processing, "annotate_study", must_not_run)
    pacs.down = False
    job = process_job(runtime, job_id)
    assert job.state is JobState.DONE and job.attempts == 2
    assert len(job.delivered) == len(pacs.received) > 0
    assert {ds_class for ds_class in (d["sop_class_uid"] for d in job.delivered)} == {
        SegmentationStorage,
        Comprehensive3DSRStorage,
    }, "both the SEG and the SR are delivered from the saved results"


def test_refused_instances_are_transient_with_the_status(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    pacs.refuse = True
    with pytest.raises(
        TransientDeliveryError, match=r"refused \d+ of \d+ instances \(first: .*out of resources"
    ):
        process_job(runtime, spool_study(runtime, phantom))


def test_inconsistent_series_fails_job_with_reason(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    broken = [ds.copy() for ds in phantom]
    del broken[5]  # a missing slice: the spacing is no longer uniform
    job = process_job(runtime, spool_study(runtime, broken))
    assert job.state is JobState.FAILED
    assert job.error and "spacing" in job.error and broken[0].SeriesInstanceUID in job.error
    # Both default pipelines failed on the same volume: the admin reads the reason once.
    assert len(job.outcomes) == 2 and job.error.startswith("1 series failed: ")
    assert job.error.count(broken[0].SeriesInstanceUID) == 1
    assert pacs.received == []


def test_unknown_caller_without_default_fails_with_reason(
    runtime: Runtime, phantom: list[Dataset]
) -> None:
    job = process_job(runtime, spool_study(runtime, phantom, calling_ae="SOMEONE_ELSE"))
    assert job.state is JobState.FAILED
    assert job.error and "no destination for calling AE 'SOMEONE_ELSE'" in job.error


def test_task_retries_then_fails_with_reason(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    """The Celery task itself: bounded retries, then a failed job that says why."""
    settings = runtime.settings.model_copy(
        update={"delivery": runtime.settings.delivery.model_copy(update={"max_retries": 2})}
    )
    app = Celery("test", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    register_tasks(app, settings, build=lambda: runtime)
    job_id = spool_study(runtime, phantom)
    pacs.down = True
    app.tasks["pacs_annotator.process_study"].apply(args=[job_id])
    job = runtime.store.get(job_id)
    assert job.state is JobState.FAILED
    assert job.error and job.error.startswith("delivery failed after 3 attempts")
    assert job.attempts == 3
    assert job.delivery_failures == 3  # each failed attempt counted once, for /metrics


def test_the_first_attempt_delivers_the_saved_files(
    runtime: Runtime, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    """What goes to the PACS is what was fsynced, read back, not the objects in memory."""
    sent: list[Dataset] = []

    def send(node: DicomNode, datasets: Sequence[Dataset]) -> DeliveryResult:
        sent.extend(datasets)
        return pacs(node, datasets)

    rt = dataclasses.replace(runtime, send=send)
    job_id = spool_study(rt, phantom)
    assert process_job(rt, job_id).state is JobState.DONE
    folder = rt.settings.results_dir / job_id
    assert sent
    for ds in sent:
        assert ds.filename == str(folder / f"{ds.SOPInstanceUID}.dcm")


def test_seg_and_sr_reach_a_real_scp_in_one_association(
    runtime: Runtime, phantom: list[Dataset]
) -> None:
    """One association per destination carries the whole job, as received by pynetdicom."""
    received: list[tuple[int, str, bytes]] = []

    def handle(event: Any) -> int:
        encoded = event.encoded_dataset(include_meta=False)
        received.append((id(event.assoc), str(event.request.AffectedSOPClassUID), encoded))
        return 0x0000

    ae = AE(ae_title="PACS")
    for sop_class in (SegmentationStorage, Comprehensive3DSRStorage):
        ae.add_supported_context(sop_class, [ExplicitVRLittleEndian])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)]
    )
    assert server is not None
    try:
        dest = {"ae_title": "PACS", "host": "127.0.0.1", "port": server.server_address[1]}
        settings = load_settings(
            None,
            data_dir=runtime.settings.data_dir,
            destinations={"pacs": {**dest, "default": True}},
        )
        rt = dataclasses.replace(runtime, settings=settings, send=make_sender(settings))
        job_id = spool_study(rt, phantom)
        assert process_job(rt, job_id).state is JobState.DONE
    finally:
        server.shutdown()
    assert {sop_class for _, sop_class, _ in received} == {
        SegmentationStorage,
        Comprehensive3DSRStorage,
    }
    assert len({assoc for assoc, _, _ in received}) == 1
    folder = rt.settings.results_dir / job_id
    saved = {dataset_bytes(path) for path in folder.glob("*.dcm")}
    assert {encoded for _, _, encoded in received} == saved, "sent as saved, byte for byte"


def _two_destinations(tmp_path: Path, pacs_outputs: list[str]) -> dict[str, Any]:
    return {
        "destinations": {
            "pacs": {
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": 4242,
                "outputs": pacs_outputs,
            },
            "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 4243},
        },
        "delivery": {"to": ["pacs", "archive"]},
    }


def _received_kinds(job_delivered: list[dict[str, Any]]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for record in job_delivered:
        kinds.setdefault(record["destination"], []).append(record["kind"])
    return kinds


def test_each_destination_receives_its_own_outputs_from_one_job(
    runtime: Runtime, tmp_path: Path, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    settings = load_settings(
        None, data_dir=tmp_path / "data", **_two_destinations(tmp_path, ["rtstruct", "kos"])
    )
    rt = dataclasses.replace(runtime, settings=settings)
    job = process_job(rt, spool_study(rt, phantom))
    assert job.state is JobState.DONE, job.error
    kinds = _received_kinds(job.delivered)
    assert set(kinds) == {"pacs", "archive"}
    assert set(kinds["pacs"]) == {"rtstruct", "kos"} and kinds["pacs"][-1] == "kos"
    assert kinds["archive"] == ["seg", "sr"]
    assert {ae for ae, _ in pacs.received} == {"ORTHANC", "ARCHIVE"}
    assert len(pacs.received) == len(job.delivered)


def test_a_retry_builds_again_when_a_destination_now_wants_more(
    runtime: Runtime, tmp_path: Path, pacs: FakePacs, phantom: list[Dataset]
) -> None:
    job_id = spool_study(runtime, phantom)
    pacs.down = True
    with pytest.raises(TransientDeliveryError):
        process_job(runtime, job_id)  # built the default SEG and SR, delivered nothing
    pacs.down = False
    wider = load_settings(
        None, data_dir=tmp_path / "data", **_two_destinations(tmp_path, ["rtstruct"])
    )
    job = process_job(dataclasses.replace(runtime, settings=wider), job_id)
    assert job.state is JobState.DONE, job.error
    assert set(_received_kinds(job.delivered)["pacs"]) == {"rtstruct"}
