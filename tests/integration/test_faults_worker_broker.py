"""Faults injected for real: a worker SIGKILLed mid-job, Redis restarted or wiped with jobs queued.

Each test runs the service as separate `pacs-annotator scp` and `worker` processes around a
redis-server the test controls, with Orthanc as the PACS that receives the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.faults import SplitStack, split_stacks, storescu, write_study
from tests.integration.test_round_trip import instances_of_modality
from tests.support.orthanc import Orthanc, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def make_stack(orthanc: Orthanc, tmp_path: Path) -> Iterator[Callable[..., SplitStack]]:
    yield from split_stacks(orthanc, tmp_path)


def _check_one_result_set(orthanc: Orthanc, study_uid: str, job: dict[str, object]) -> None:
    """Orthanc holds exactly one SEG and one SR for the study: the ones the job delivered."""
    seg = instances_of_modality(orthanc, study_uid, "SEG")
    sr = instances_of_modality(orthanc, study_uid, "SR")
    assert len(seg) == 1 and len(sr) == 1, f"expected one SEG and one SR, got {seg} / {sr}"
    delivered = job["delivered"]
    assert isinstance(delivered, list) and len(delivered) == 2


def _queued(job: dict[str, object]) -> bool:
    return job["state"] == "queued"


def _done(job: dict[str, object]) -> bool:
    return job["state"] in ("done", "failed")


VISIBILITY_TIMEOUT = 5.0  # worker.visibility_timeout_seconds: above the lease (3 s)

# Two ways back for a job whose worker died, each tested alone:
# - Redis hands the unacknowledged message on after worker.visibility_timeout_seconds
#   (the dispatcher's reconciliation is switched off: one pass, at start-up);
# - the dispatcher sees the job's lease go stale and queues it again (the visibility
#   timeout is an hour).
WAYS_BACK = {
    "redis-redelivers": {
        "recovery": {"interval_seconds": 3600},
        "worker": {"visibility_timeout_seconds": VISIBILITY_TIMEOUT},
    },
    "dispatcher-requeues": {"worker": {"visibility_timeout_seconds": 3600, "lease_seconds": 3}},
}


@pytest.mark.parametrize("way_back", sorted(WAYS_BACK))
def test_worker_killed_mid_job_runs_again_on_another_worker(
    way_back: str, orthanc: Orthanc, make_stack: Callable[..., SplitStack], tmp_path: Path
) -> None:
    stack = make_stack(**WAYS_BACK[way_back])
    stack.start_scp()
    stalling = stack.start_worker(stall_seconds=600)
    study_uid, paths = write_study(tmp_path / "study")
    storescu(stack.port, paths, calling=orthanc.aet)

    # The job is in the middle of its work on the first worker: kill it, pool and all.
    wait_for(
        lambda: any(stack.markers.glob("started-*")) or None,
        timeout=240,
        interval=0.2,
        message="the stalling worker to start the job",
    )
    running = stack.jobs_of(study_uid)
    assert [j["state"] for j in running] == ["running"]
    stalling.kill()
    if way_back == "redis-redelivers":
        # A worker looks for unacknowledged messages older than the visibility timeout as
        # it starts, then only every 100 s (kombu's unacked_restore_interval times its
        # unacked_restore_throttle). Start the next one once the timeout has passed since
        # the message was handed out (before the job started), so its first look finds it.
        handed_out = min(p.stat().st_mtime for p in stack.markers.glob("started-*"))
        time.sleep(max(0.0, handed_out + VISIBILITY_TIMEOUT + 1 - time.time()))

    # The next worker finds the dead worker's lease stale and takes the job over.
    second = stack.start_worker()
    job = stack.wait_job(study_uid, _done, "the job to finish on the second worker")
    assert job["state"] == "done", f"{job['error']}\n{stack.tails()}"
    assert job["attempts"] == 2
    assert job["id"] in second.log()
    _check_one_result_set(orthanc, study_uid, job)
    requeued = f"job {job['id']} was running with a stale lease" in stack.service().log()
    assert requeued == (way_back == "dispatcher-requeues")


def test_redis_restarted_with_jobs_queued_keeps_them(
    orthanc: Orthanc, make_stack: Callable[..., SplitStack], tmp_path: Path
) -> None:
    stack = make_stack()
    stack.start_scp()
    study_uid, paths = write_study(tmp_path / "study")
    storescu(stack.port, paths, calling=orthanc.aet)
    stack.wait_job(study_uid, _queued, "the job to be queued (no worker yet)")
    assert stack.redis.queue_length("pacs-annotator") == 1

    stack.redis.stop()  # SIGTERM; its append-only file keeps the queue
    stack.redis.start()
    assert stack.redis.queue_length("pacs-annotator") == 1

    stack.start_worker()
    job = stack.wait_job(study_uid, _done, "the queued job to finish after the restart")
    assert job["state"] == "done", job["error"]
    _check_one_result_set(orthanc, study_uid, job)
    assert "queued again" not in stack.service().log(), "the message survived: no re-queue"


@pytest.mark.parametrize("loss", ["flushall", "restart-without-aof"])
def test_redis_losing_its_data_loses_no_job(
    loss: str, orthanc: Orthanc, make_stack: Callable[..., SplitStack], tmp_path: Path
) -> None:
    stack = make_stack(appendonly=False)
    stack.start_scp()
    study_uid, paths = write_study(tmp_path / "study")
    storescu(stack.port, paths, calling=orthanc.aet)
    job = stack.wait_job(study_uid, _queued, "the job to be queued (no worker yet)")
    assert stack.redis.queue_length("pacs-annotator") == 1

    if loss == "flushall":
        client = stack.redis.client()
        client.flushall()
        client.close()
    else:
        stack.redis.stop(kill=True)
        stack.redis.start()
    assert stack.redis.queue_length("pacs-annotator") == 0, "the broker really lost the job"

    # The dispatcher sees a queued job with no message in Redis and queues it again.
    stack.start_worker()
    done = stack.wait_job(study_uid, _done, "the lost job to be re-queued and finish")
    assert done["state"] == "done", done["error"]
    assert done["id"] == job["id"]
    _check_one_result_set(orthanc, study_uid, done)
    log = stack.service().log()
    assert f"job {job['id']} was queued with no message in the broker" in log
