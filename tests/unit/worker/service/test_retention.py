"""When the SCP process purges: at start (resuming), every interval, at once under disk
pressure, and not in a tight loop when nothing more can be freed. Clock and free space
are injected; the purge is a recorder (its own behaviour is tested in worker/jobs)."""

from __future__ import annotations

from pathlib import Path

from tests.support.jobs import make_settings
from worker.config import GIB
from worker.jobs.retention import PurgeReport
from worker.service.retention import PurgeSchedule


class Recorder:
    def __init__(self) -> None:
        self.runs: list[str] = []
        self.report = PurgeReport(dry_run=False)

    def run(self, *, dry_run: bool = False, actor: str = "purge") -> PurgeReport:
        self.runs.append(actor)
        return self.report


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.free = 100 * GIB

    def __call__(self) -> float:
        return self.now

    def free_bytes(self, _path: Path) -> int:
        return self.free


def _schedule(tmp_path: Path, **retention: object) -> tuple[PurgeSchedule, Recorder, Clock]:
    settings = make_settings(tmp_path, retention=retention)
    recorder, clock = Recorder(), Clock()
    return (
        PurgeSchedule(recorder, settings, clock=clock, free_bytes=clock.free_bytes),
        recorder,
        clock,
    )


def test_purges_at_start_then_every_interval(tmp_path: Path) -> None:
    schedule, recorder, clock = _schedule(tmp_path, purge_interval_seconds=600)
    schedule.step()
    assert recorder.runs == ["scheduled purge"]  # at start: finishes an interrupted purge
    clock.now += 599
    schedule.step()
    assert len(recorder.runs) == 1
    clock.now += 1
    schedule.step()
    assert len(recorder.runs) == 2


def test_disk_pressure_purges_at_once_between_intervals(tmp_path: Path) -> None:
    schedule, recorder, clock = _schedule(
        tmp_path, purge_interval_seconds=600, pressure_free_bytes=5 * GIB
    )
    schedule.step()
    clock.now += 10
    clock.free = 5 * GIB - 1
    schedule.step()
    assert len(recorder.runs) == 2


def test_with_nothing_left_to_free_pressure_retries_slowly(tmp_path: Path) -> None:
    schedule, recorder, clock = _schedule(
        tmp_path, purge_interval_seconds=0, pressure_free_bytes=5 * GIB
    )
    clock.free = GIB
    recorder.report = PurgeReport(dry_run=False, free_bytes=GIB, pressure=True)
    schedule.step()
    assert len(recorder.runs) == 1 and schedule.short_of_space
    clock.now += 10
    schedule.step()
    assert len(recorder.runs) == 1
    clock.now += 30
    schedule.step()
    assert len(recorder.runs) == 2


def test_interval_zero_and_no_pressure_never_purges(tmp_path: Path) -> None:
    schedule, recorder, clock = _schedule(tmp_path, purge_interval_seconds=0, pressure_free_bytes=0)
    for _ in range(3):
        schedule.step()
        clock.now += 10_000
    assert recorder.runs == []


def test_the_scp_process_purges_expired_data_on_its_own(tmp_path: Path) -> None:
    """The real SCP loop (run_scp) with its purge thread removes a delivered study's
    received instances once they expired, with nobody running `pacs-annotator purge`."""
    import itertools
    import threading
    from datetime import timedelta

    from scu_scp.spool import Spool
    from tests.support.jobs import delivered_study
    from tests.support.processes import free_port
    from worker.config import load_settings
    from worker.jobs.store import JobStore
    from worker.service.scp import run_scp

    settings = load_settings(
        None,
        data_dir=tmp_path,
        broker_url="redis://127.0.0.1:1/0",
        scp={"host": "127.0.0.1", "port": free_port()},
        retention={"pressure_free_bytes": 0},
    )
    store = JobStore(settings.effective_database_url)
    study = delivered_study(Spool(settings.spool_dir), store, timedelta(hours=7))
    give_up = itertools.count()

    def keep_alive() -> bool:  # asked every second; stop once purged (or after a minute)
        return study.path.exists() and next(give_up) < 60

    run_scp(settings, threading.Event(), keep_alive=keep_alive)
    assert not study.path.exists()
    assert store.get(study.batch_id).inputs_purged_at is not None
    store.close()
