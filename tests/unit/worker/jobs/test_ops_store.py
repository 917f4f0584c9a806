"""The operational records beside the jobs: audit log, worker heartbeats, admin controls.

On the job store's real database (SQLite, and PostgreSQL where one answers); the clock of
the heartbeats is moved by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.jobs import ops_store
from worker.jobs.ops_store import OpsStore, WorkerStatus
from worker.jobs.store import JobStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ops_store, "utc_now", clock)
    return clock


@pytest.fixture
def ops(store: JobStore) -> OpsStore:
    return OpsStore(store.engine)


def test_the_audit_log_lists_newest_first_up_to_the_limit(ops: OpsStore, clock: Clock) -> None:
    assert ops.audit_entries() == []
    for n in range(3):
        ops.audit("admin", "retry", f"job-{n}", detail=f"attempt {n}")
        clock.advance(1)
    ops.audit("token", "pause_intake", "scp")  # detail is optional
    entries = ops.audit_entries()
    assert [(e.actor, e.action, e.target, e.detail) for e in entries] == [
        ("token", "pause_intake", "scp", ""),
        ("admin", "retry", "job-2", "attempt 2"),
        ("admin", "retry", "job-1", "attempt 1"),
        ("admin", "retry", "job-0", "attempt 0"),
    ]
    assert entries[0].at == T0 + timedelta(seconds=3)  # timezone-aware, as written
    assert [e.target for e in ops.audit_entries(limit=2)] == ["scp", "job-2"]


def _beat(ops: OpsStore, name: str, **changes: object) -> None:
    fields: dict[str, object] = {
        "device": "cpu",
        "queues": ("pacs-annotator",),
        "pid": 100,
        "current_job": None,
        "started_at": T0,
    }
    fields.update(changes)
    ops.heartbeat(name, **fields)  # type: ignore[arg-type]


def test_a_heartbeat_keeps_one_row_per_worker_with_its_latest_state(
    ops: OpsStore, clock: Clock
) -> None:
    _beat(ops, "host/100")
    clock.advance(10)
    _beat(ops, "host/100", device="cuda:1", queues=("gpu", "cpu"), current_job="job-7")
    (row,) = ops.workers()
    assert row == WorkerStatus(
        name="host/100",
        device="cuda:1",
        queues=("gpu", "cpu"),
        pid=100,
        current_job="job-7",
        started_at=T0,
        last_seen=T0 + timedelta(seconds=10),
    )
    _beat(ops, "host/200", queues=())
    assert [(w.name, w.queues) for w in ops.workers()] == [
        ("host/100", ("gpu", "cpu")),
        ("host/200", ()),  # no queues round-trips as none, not as one empty name
    ]


def test_workers_seen_within_leaves_out_stale_rows_and_forget_removes_one(
    ops: OpsStore, clock: Clock
) -> None:
    _beat(ops, "old/1")
    clock.advance(50)
    _beat(ops, "new/2")
    clock.advance(20)  # old/1 last seen 70 s ago, new/2 20 s ago
    assert [w.name for w in ops.workers(seen_within=60)] == ["new/2"]
    assert [w.name for w in ops.workers(seen_within=70)] == ["new/2", "old/1"]
    assert [w.name for w in ops.workers()] == ["new/2", "old/1"]
    ops.forget_worker("old/1")
    ops.forget_worker("never/3")  # unknown: nothing happens
    assert [w.name for w in ops.workers()] == ["new/2"]


def test_a_worker_is_online_until_its_last_beat_is_older_than_the_stale_limit() -> None:
    worker = WorkerStatus("h/1", "cpu", (), 1, None, started_at=T0, last_seen=T0)
    assert worker.online(T0 + timedelta(seconds=60), stale_after=60)
    assert not worker.online(T0 + timedelta(seconds=60.5), stale_after=60)


def test_intake_pause_is_a_flag_that_can_be_lifted(ops: OpsStore) -> None:
    assert ops.intake_paused() is False
    ops.set_intake_paused(True, "admin")
    ops.set_intake_paused(True, "admin")  # setting it twice keeps one flag
    assert ops.intake_paused() is True
    ops.set_intake_paused(False, "token")
    assert ops.intake_paused() is False


def test_force_complete_requests_are_handed_out_once_in_order(ops: OpsStore) -> None:
    assert ops.take_force_complete_requests() == []
    ops.request_force_complete("1.2.3", "admin")
    ops.request_force_complete("1.2.4", "token")
    assert ops.take_force_complete_requests() == ["1.2.3", "1.2.4"]
    assert ops.take_force_complete_requests() == []
    ops.request_force_complete("1.2.3", "admin")  # asked again later: handed out again
    assert ops.take_force_complete_requests() == ["1.2.3"]


def test_records_are_shared_by_every_store_on_the_same_database(store: JobStore) -> None:
    """The monitor writes a control, the SCP process reads it: two engines, one database."""
    other = JobStore(store.engine.url.render_as_string(hide_password=False))
    writer, reader = OpsStore(store.engine), OpsStore(other.engine)
    writer.set_intake_paused(True, "admin")
    writer.request_force_complete("1.2.5", "admin")
    assert reader.intake_paused() is True
    assert reader.take_force_complete_requests() == ["1.2.5"]
    assert writer.take_force_complete_requests() == []
    other.close()
