"""Worker heartbeats written to the real job database."""

from __future__ import annotations

import os
from pathlib import Path

from worker.jobs.ops_store import OpsStore
from worker.jobs.store import JobStore
from worker.run.heartbeat import Heartbeat


def test_heartbeat_row_tracks_current_job_and_goes_on_stop(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    ops = OpsStore(store.engine)
    beat = Heartbeat(ops, device="cpu", queues=("pacs-annotator",), interval=0.1)
    beat.start()
    try:
        (row,) = ops.workers()
        assert row.name == beat.name and row.pid == os.getpid() and row.current_job is None
        first_seen = row.last_seen
        beat.set_current("job-7")
        assert ops.workers()[0].current_job == "job-7"
        beat.beat()
        assert ops.workers()[0].last_seen >= first_seen
        beat.set_current(None)
        assert ops.workers()[0].current_job is None
    finally:
        beat.stop()
    assert ops.workers() == []
    store.close()
