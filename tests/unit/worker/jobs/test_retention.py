"""The retention purge over a real SQLite job store, a real spool and real results folders.

Jobs of every state are made the way the service makes them (spool store and seal, the
dispatcher, the store's own transitions); only their age is set, by moving finished_at
back in the database, and the purge's clock is the real one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import text

from scu_scp.spool import Spool
from tests.support.jobs import make_settings, sealed_study
from worker.admin.actions import ActionError, Admin, retryable
from worker.config import GIB, Settings
from worker.jobs import retention
from worker.jobs.dispatch import Dispatcher
from worker.jobs.ops_store import OpsStore
from worker.jobs.retention import Kind, Purger
from worker.jobs.store import JobState, JobStore, utc_now

HOUR = timedelta(hours=1)


@dataclass
class World:
    """The service's stores and folders, and what each job is expected to keep."""

    settings: Settings
    store: JobStore
    ops: OpsStore
    spool: Spool
    jobs: dict[str, str] = field(default_factory=dict)  # label -> job id
    free: int = 100 * GIB

    def purger(self) -> Purger:
        return Purger(self.settings, self.store, self.ops, self.spool, free_bytes=self._free)

    def _free(self, _path: Path) -> int:
        return self.free

    def reopen(self) -> None:
        """A restart: every object built again from the settings, on the same files."""
        self.store.close()
        self.store = JobStore(self.settings.effective_database_url)
        self.ops = OpsStore(self.store.engine)
        self.spool = Spool(self.settings.spool_dir)

    def inputs(self, label: str) -> Path:
        return self.spool.studies / self.jobs[label]

    def results(self, label: str) -> Path:
        return self.settings.results_dir / self.jobs[label]

    def job(self, label: str, state: JobState, age: timedelta | None = None) -> str:
        study = sealed_study(self.spool)
        job = Dispatcher(self.store, self.spool, lambda _id: None).dispatch(study)
        self.jobs[label] = job.id
        if state is JobState.QUEUED:
            return job.id
        if state is JobState.CANCELLED:
            self.store.cancel(job.id, "cancelled by test")
        else:
            self.store.claim(job.id, lease_seconds=60)
            _results(self.settings.results_dir / job.id)
            if state is not JobState.RUNNING:
                self.store.mark_delivering(job.id, pipelines=["ct-basic"], outcomes=[])
            if state is JobState.DONE:
                self.store.mark_done(job.id, delivered=[])
            elif state is JobState.FAILED:
                self.store.mark_failed(job.id, "delivery refused")
        if age is not None:
            with self.store.engine.begin() as conn:
                conn.execute(
                    text("UPDATE jobs SET finished_at = :t WHERE id = :id"),
                    {"t": utc_now() - age, "id": job.id},
                )
        return job.id


def _results(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "1.2.3.dcm").write_bytes(b"\0" * 4096)
    (folder / "manifest.json").write_text('{"outputs": [], "outcomes": []}')


def _world(tmp_path: Path, **retention_settings: Any) -> World:
    options = {"pressure_free_bytes": 0, **retention_settings}
    settings = make_settings(tmp_path, retention=options)
    settings.data_dir.mkdir(parents=True)
    store = JobStore(settings.effective_database_url)
    return World(settings, store, OpsStore(store.engine), Spool(settings.spool_dir))


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Defaults: inputs 6 h after delivery, results 168 h, failed 336 h (grace 72 h)."""
    w = _world(tmp_path)
    w.spool.store(  # a study still receiving
        b"\0" * 512,
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        calling_ae="PACS",
        calling_host="127.0.0.1",
    )
    w.job("queued", JobState.QUEUED)
    w.job("running", JobState.RUNNING)
    w.job("delivering", JobState.DELIVERING)
    w.job("done-1h", JobState.DONE, 1 * HOUR)
    w.job("done-10h", JobState.DONE, 10 * HOUR)
    w.job("done-200h", JobState.DONE, 200 * HOUR)
    w.job("failed-10h", JobState.FAILED, 10 * HOUR)
    w.job("failed-100h", JobState.FAILED, 100 * HOUR)
    w.job("failed-400h", JobState.FAILED, 400 * HOUR)
    w.job("cancelled-400h", JobState.CANCELLED, 400 * HOUR)
    sealed_study(w.spool)  # sealed, its job row not written yet (the dispatcher will)
    w.spool.quarantine(b"not dicom", "no SOP Instance UID", calling_ae="PACS")
    pulls = w.spool.root / "pulls"
    for name, age in (("old", 30 * HOUR), ("new", 1 * HOUR)):
        (pulls / name / "incoming" / "1.2.3").mkdir(parents=True)
        (pulls / name / "incoming" / "1.2.3" / "study.json").write_text("{}")
        stamp = (utc_now() - age).timestamp()
        for path in [pulls / name, *(pulls / name).rglob("*")]:
            os.utime(path, (stamp, stamp))
    return w


#: (kind, job label) the defaults make expired and safe in the world above.
EXPECTED = {
    (Kind.DELIVERED_INPUTS, "done-10h"),
    (Kind.DELIVERED_INPUTS, "done-200h"),
    (Kind.DELIVERED_RESULTS, "done-200h"),
    (Kind.FAILED_INPUTS, "failed-400h"),
    (Kind.FAILED_RESULTS, "failed-400h"),
    (Kind.FAILED_INPUTS, "cancelled-400h"),
}


def _everything(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _files(paths: set[Path]) -> set[Path]:
    """Without the job database's own files (SQLite's WAL changes as it is used)."""
    return {p for p in paths if "jobs.sqlite3" not in p.name}


def _labelled(w: World, items: list[retention.PurgeItem]) -> set[tuple[Kind, str]]:
    labels = {job_id: label for label, job_id in w.jobs.items()}
    return {(i.kind, labels.get(i.name, i.name)) for i in items}


def _expected_gone(w: World) -> set[Path]:
    gone: set[Path] = set()
    for kind, label in EXPECTED:
        folder = w.inputs(label) if kind.value.endswith("inputs") else w.results(label)
        gone |= _everything(folder)
    return gone | _everything(w.spool.root / "pulls" / "old")


def test_dry_run_lists_the_expired_and_safe_set_and_removes_nothing(world: World) -> None:
    before = _everything(world.settings.data_dir)
    report = world.purger().run(dry_run=True)
    assert _labelled(world, report.items) == EXPECTED | {(Kind.PULL_STAGING, "old")}
    assert _everything(world.settings.data_dir) == before
    assert world.ops.audit_entries() == []
    assert all(world.store.get(j).inputs_purged_at is None for j in world.jobs.values())


def test_purge_removes_exactly_what_the_dry_run_listed(world: World) -> None:
    listed = _labelled(world, world.purger().run(dry_run=True).items)
    before = _everything(world.settings.data_dir)
    gone = _expected_gone(world)

    report = world.purger().run()

    assert _labelled(world, report.items) == listed
    after = _everything(world.settings.data_dir)
    assert _files(before) - _files(after) == gone
    (entry,) = [e for e in world.ops.audit_entries() if e.action == "purge"]
    assert "delivered_inputs 2 (" in entry.detail and "failed_inputs 2 (" in entry.detail
    assert "1.2." not in entry.detail  # counts and bytes, no UIDs
    assert world.purger().run().items == []  # nothing left to do


def test_a_purged_job_says_so_and_its_retry_explains_why_it_cannot_run(world: World) -> None:
    world.purger().run()
    failed = world.store.get(world.jobs["failed-400h"])
    assert failed.inputs_purged_at is not None and failed.results_purged_at is not None
    assert not retryable(failed)
    admin = Admin(world.store, world.ops, world.spool, lambda _id: None)
    with pytest.raises(ActionError, match="received instances were purged"):
        admin.retry(failed.id, "alice")
    assert world.store.get(failed.id).state is JobState.FAILED
    kept = world.store.get(world.jobs["failed-100h"])
    assert admin.retry(kept.id, "alice").state is JobState.QUEUED
    done = world.store.get(world.jobs["done-10h"])
    assert done.inputs_purged_at is not None and done.results_purged_at is None


def test_a_retry_that_gets_in_first_keeps_the_jobs_files(world: World) -> None:
    """The plan saw the job failed; by the time of removal it is queued again."""
    purger = world.purger()
    report = purger.plan()
    job_id = world.jobs["failed-400h"]
    world.store.reset_for_retry(job_id)
    for item in report.items:
        purger._remove(item)
    assert world.inputs("failed-400h").is_dir() and world.results("failed-400h").is_dir()
    assert world.store.get(job_id).inputs_purged_at is None


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may catch it)."""


def _crash_on_second(real: Callable[..., Any]) -> Callable[..., Any]:
    calls = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise Crash
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("where", ["after the mark", "after the rename"])
def test_a_restart_mid_purge_loses_nothing_that_stays_and_the_purge_resumes(
    world: World, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    before = _everything(world.settings.data_dir)
    gone = _expected_gone(world)
    if where == "after the mark":
        monkeypatch.setattr(Purger, "_discard", _crash_on_second(Purger._discard))
    else:
        monkeypatch.setattr(retention.shutil, "rmtree", _crash_on_second(retention.shutil.rmtree))
    with pytest.raises(Crash):
        world.purger().run()
    monkeypatch.undo()
    survivors = _files(before - gone)
    assert survivors <= _everything(world.settings.data_dir)

    world.reopen()
    world.purger().run()

    after = _everything(world.settings.data_dir)
    assert survivors <= after
    assert not (gone & after)
    assert not any((world.spool.root / "purging").iterdir())
    assert world.purger().plan().items == []


def test_a_pull_still_writing_is_not_staging_left_behind(world: World) -> None:
    """An old staging folder with a fresh write inside is a pull in progress."""
    (world.spool.root / "pulls" / "old" / "incoming" / "1.2.3" / "study.json").write_text("{}")
    assert (Kind.PULL_STAGING, "old") not in _labelled(world, world.purger().plan().items)


def test_zero_keeps_forever(tmp_path: Path) -> None:
    w = _world(tmp_path, delivered_inputs_hours=0, delivered_results_hours=0, failed_hours=0)
    w.job("done", JobState.DONE, 10_000 * HOUR)
    w.job("failed", JobState.FAILED, 10_000 * HOUR)
    assert w.purger().run().items == []
    assert w.inputs("done").is_dir() and w.results("failed").is_dir()


def test_failed_data_over_the_cap_goes_oldest_first_but_never_within_its_grace(
    tmp_path: Path,
) -> None:
    w = _world(tmp_path, failed_max_bytes=1, failed_grace_hours=24)
    w.job("failed-200h", JobState.FAILED, 200 * HOUR)
    w.job("failed-100h", JobState.FAILED, 100 * HOUR)
    w.job("failed-1h", JobState.FAILED, 1 * HOUR)
    report = w.purger().run()
    assert {label for _kind, label in _labelled(w, report.items)} == {"failed-200h", "failed-100h"}
    assert {i.why for i in report.items} == {"failed cap"}
    assert w.inputs("failed-1h").is_dir() and w.results("failed-1h").is_dir()


def test_job_rows_and_audit_entries_expire_only_once_their_files_are_gone(tmp_path: Path) -> None:
    w = _world(tmp_path, job_records_days=30, delivered_results_hours=0)
    w.job("old", JobState.DONE, 40 * 24 * HOUR)  # results kept forever: row must stay
    w.job("old-bare", JobState.DONE, 40 * 24 * HOUR)
    w.job("recent", JobState.DONE, 10 * 24 * HOUR)
    import shutil

    shutil.rmtree(w.results("old-bare"))
    with w.store.engine.begin() as conn:
        w.ops.audit("alice", "retry", "x")
        conn.execute(text("UPDATE audit_log SET at = :t"), {"t": utc_now() - 40 * 24 * HOUR})
    report = w.purger().run()
    assert (Kind.JOB_RECORDS, "old-bare") in _labelled(w, report.items)
    assert w.store.find(w.jobs["old-bare"]) is None
    assert w.store.find(w.jobs["old"]) is not None and w.store.find(w.jobs["recent"]) is not None
    assert report.audit_entries == 1
    assert [e.action for e in w.ops.audit_entries()] == ["purge"]


def test_disk_pressure_frees_delivered_data_oldest_first_and_nothing_else(tmp_path: Path) -> None:
    w = _world(tmp_path, pressure_free_bytes=10 * GIB)
    w.job("failed-1h", JobState.FAILED, 1 * HOUR)
    w.job("done-3h", JobState.DONE, 3 * HOUR)
    w.job("done-2h", JobState.DONE, 2 * HOUR)
    w.job("done-1h", JobState.DONE, 1 * HOUR)
    w.job("delivering", JobState.DELIVERING)
    w.free = 10 * GIB - 1  # short by one byte: the oldest delivered folder is enough
    report = w.purger().run()
    assert report.pressure
    assert _labelled(w, report.items) == {(Kind.DELIVERED_INPUTS, "done-3h")}
    assert {i.why for i in report.items} == {"pressure"}

    w.free = 0  # nothing will be enough: every delivered folder goes, nothing else
    report = w.purger().run()
    assert {label for _kind, label in _labelled(w, report.items)} == {
        "done-3h",
        "done-2h",
        "done-1h",
    }
    assert w.inputs("failed-1h").is_dir() and w.results("failed-1h").is_dir()
    assert w.inputs("delivering").is_dir() and w.results("delivering").is_dir()


def test_no_pressure_above_the_threshold(tmp_path: Path) -> None:
    w = _world(tmp_path, pressure_free_bytes=10 * GIB)
    w.job("done-1h", JobState.DONE, 1 * HOUR)
    w.free = 10 * GIB
    report = w.purger().run()
    assert not report.pressure and report.items == []


def test_under_pressure_a_delivered_job_frees_its_inputs_at_once(tmp_path: Path) -> None:
    """What the worker calls after mark_done: the just-delivered job's received images go
    while the disk is short, marked and audited; its results stay; any other job is kept."""
    w = _world(tmp_path, pressure_free_bytes=10 * GIB)
    done = w.job("done", JobState.DONE)
    w.job("delivering", JobState.DELIVERING)
    w.job("failed", JobState.FAILED)
    w.free = 10 * GIB  # no pressure: kept for its 6 hours
    assert w.purger().release_delivered_inputs(w.store.get(done)) == 0
    assert w.inputs("done").is_dir()
    w.free = 10 * GIB - 1
    for label in ("delivering", "failed"):  # not done: never released here
        assert w.purger().release_delivered_inputs(w.store.get(w.jobs[label])) == 0
        assert w.inputs(label).is_dir()
    assert w.purger().release_delivered_inputs(w.store.get(done)) > 0
    assert not w.inputs("done").exists() and w.results("done").is_dir()
    assert w.store.get(done).inputs_purged_at is not None
    assert w.store.get(done).results_purged_at is None
    (entry,) = w.ops.audit_entries()
    assert (entry.actor, entry.action) == ("disk pressure", "purge")
    assert "delivered_inputs 1" in entry.detail
    assert w.purger().release_delivered_inputs(w.store.get(done)) == 0  # already gone
