"""What the data on this node takes, per kind: for /metrics, the dashboard and /readyz.

Kinds: ``receiving`` (studies still arriving, and datasets mid-transfer), ``sealed``
(received instances of jobs not failed: waiting, running, or delivered and awaiting their
purge), ``results`` (results folders of those jobs), ``failed`` (inputs and results of
failed and cancelled jobs), ``quarantine`` and ``superseded`` (never purged). Each has a
count, bytes, and the age of its oldest item. Only counts, sizes and ages: no UIDs.

The walk stats every file of the spool and the results folders, so the monitor keeps its
result for ``monitor.data_usage_cache_seconds`` (``UsageCache``): a dashboard reloading
every few seconds and a Prometheus scrape share one walk, and ages stay right because they
are computed from the oldest item's time at each request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from scu_scp.spool import Spool
from worker.jobs.retention import PULL_STAGING, RESULTS_TRASH, tree_bytes
from worker.jobs.store import Job, JobState, JobStore

KINDS = ("receiving", "sealed", "results", "failed", "quarantine", "superseded")
_FAILED = (JobState.FAILED, JobState.CANCELLED)


@dataclass
class KindUsage:
    count: int = 0
    bytes: int = 0
    oldest: datetime | None = None

    def add(self, size: int, since: datetime) -> None:
        self.count += 1
        self.bytes += size
        if self.oldest is None or since < self.oldest:
            self.oldest = since

    def oldest_age_seconds(self, now: datetime) -> float:
        return max(0.0, (now - self.oldest).total_seconds()) if self.oldest else 0.0


@dataclass
class DataUsage:
    """Usage per kind, and how much of it the purge may remove under disk pressure."""

    kinds: dict[str, KindUsage] = field(default_factory=lambda: {k: KindUsage() for k in KINDS})
    freeable_bytes: int = 0  # delivered jobs' folders: disk pressure may remove them

    @property
    def held_bytes(self) -> dict[str, int]:
        """Bytes per kind the purge may not remove now (what pressure cannot free)."""
        held = {k: u.bytes for k, u in self.kinds.items()}
        held["sealed"] = max(0, held["sealed"] + held["results"] - self.freeable_bytes)
        del held["results"]  # counted with sealed: the active jobs' inputs and results
        return held


def _mtime(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return datetime.now(UTC)


def _subdirs(folder: Path, skip: Iterable[str] = ()) -> list[Path]:
    if not folder.is_dir():
        return []
    names = set(skip)
    return [p for p in folder.iterdir() if p.is_dir() and p.name not in names]


def data_usage(store: JobStore, spool: Spool, results_dir: Path) -> DataUsage:
    """Walk the spool and the results folders once (sizes of files, not of blocks)."""
    usage = DataUsage()
    kinds = usage.kinds
    for study in _subdirs(spool.incoming):
        kinds["receiving"].add(tree_bytes(study), _mtime(study / "study.json"))
    for partial in (p for p in spool.receiving.iterdir() if p.is_file()):
        kinds["receiving"].add(tree_bytes(partial), _mtime(partial))
    batches = _subdirs(spool.studies)
    results = _subdirs(results_dir, skip=(RESULTS_TRASH,))
    jobs = store.find_many(sorted({p.name for p in batches + results}))
    for folder, kind in [(b, "sealed") for b in batches] + [(r, "results") for r in results]:
        job: Job | None = jobs.get(folder.name)
        size = tree_bytes(folder)
        if job is not None and job.state in _FAILED:
            kinds["failed"].add(size, job.finished_at or job.received_at)
            continue
        kinds[kind].add(size, job.received_at if job else _mtime(folder))
        if job is not None and job.state is JobState.DONE:
            usage.freeable_bytes += size
    for name in ("quarantine", "superseded"):
        root = spool.quarantine_dir if name == "quarantine" else spool.superseded
        for item in (p for p in root.rglob("*.dcm") if p.is_file()):
            kinds[name].add(item.stat().st_size, _mtime(item))
    for staging in _subdirs(spool.root / PULL_STAGING):
        kinds["receiving"].add(tree_bytes(staging), _mtime(staging))
    return usage


class UsageCache:
    """``data_usage`` at most once per ``ttl_seconds`` (0: at every call), shared by threads.

    One lock around the walk: requests arriving while it runs wait for it and take its
    result, instead of each walking the same trees at once.
    """

    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0")
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value: DataUsage | None = None
        self._measured_at = 0.0

    def get(self, store: JobStore, spool: Spool, results_dir: Path) -> DataUsage:
        with self._lock:
            if self._value is not None and self._clock() - self._measured_at < self._ttl:
                return self._value
            self._value = data_usage(store, spool, results_dir)
            self._measured_at = self._clock()  # after the walk: a slow walk is not re-run at once
            return self._value
