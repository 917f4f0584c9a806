"""Stage timings land beside a job's results, for the end-to-end benchmark."""

from __future__ import annotations

from pathlib import Path

from pipelines.registry import builtin_pipelines
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, make_settings, spool_study
from tests.support.phantom import make_ct_phantom
from worker.jobs.store import JobState, JobStore
from worker.run.processing import Runtime, process_job
from worker.run.timings import read_timings, record_timings


def test_a_job_records_every_stage(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    rt = Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines=dict(builtin_pipelines()),
        send=FakePacs(),
    )
    job_id = spool_study(rt, make_ct_phantom(slices=8, size=64, pixel_spacing=5.5).datasets)
    assert process_job(rt, job_id).state is JobState.DONE
    timings = read_timings(settings.results_dir / job_id)
    assert set(timings) == {"load", "pipelines", "write", "save", "deliver"}
    assert all(value >= 0 for value in timings.values())
    assert timings["pipelines"] > 0


def test_record_merges_and_unreadable_file_reads_empty(tmp_path: Path) -> None:
    record_timings(tmp_path, {"load": 1.0})
    record_timings(tmp_path, {"deliver": 2.0, "load": 3.0})
    assert read_timings(tmp_path) == {"load": 3.0, "deliver": 2.0}
    (tmp_path / "timings.json").write_text("not json")
    assert read_timings(tmp_path) == {}
