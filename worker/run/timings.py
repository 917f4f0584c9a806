"""Per-stage durations of a job, kept beside its results as ``timings.json``.

Cheap (one small file per stage group) and outside the job table on purpose: the
benchmarks (bench/end_to_end.py) and an admin reading a slow job use it; nothing depends
on it to run. Stages: load, pipelines, write (SEG/SR objects), save (results to disk),
deliver (C-STORE to every destination, last attempt).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from worker.run.results import write_atomic

log = logging.getLogger(__name__)

TIMINGS = "timings.json"


def read_timings(folder: Path) -> dict[str, float]:
    try:
        data = json.loads((folder / TIMINGS).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_timings(folder: Path, stages: Mapping[str, float]) -> None:
    """Merge ``stages`` (seconds) into the folder's timings file; never fails the job."""
    merged = {**read_timings(folder), **{k: round(v, 4) for k, v in stages.items()}}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(merged, indent=1)
        write_atomic(folder / TIMINGS, lambda tmp: tmp.write_text(text), fsync=False)
    except OSError as exc:
        log.warning("cannot record stage timings in %s: %s", folder, exc)


@contextmanager
def timed(folder: Path, stage: str) -> Iterator[None]:
    """Record how long the block took as ``stage`` (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record_timings(folder, {stage: time.perf_counter() - started})
