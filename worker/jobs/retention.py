"""The retention purge: remove what has expired, never what work still needs.

What may go, per kind (``retention.*`` settings, 0 = keep forever):

- ``delivered_inputs`` / ``delivered_results``: a done job's spool batch and results
  folder, ``delivered_inputs_hours`` / ``delivered_results_hours`` after it finished;
- ``failed_inputs`` / ``failed_results``: the same of a failed or cancelled job, after
  ``failed_hours``, or earlier (oldest first) while they hold more than
  ``failed_max_bytes``; never within ``failed_grace_hours`` of the failure;
- ``pull_staging``: ``spool/pulls/<x>`` folders left by interrupted pulls;
- ``job_records``: job rows (once their files are gone) and audit entries.

A job that is receiving, queued, running or delivering is never a candidate: only final
jobs are. Disk pressure (free space below ``retention.pressure_free_bytes``) adds a done
job's data before it expires, oldest first, until there is room again; while it lasts,
the worker also frees each job's received instances as soon as it is delivered
(``release_delivered_inputs``). Quarantine and
superseded copies are never purged: an admin decides about those.

Removal is crash-safe: the job row is marked purged (only if it is still in the state the
plan saw, so a retry that got in first wins), the folder is renamed into a trash folder
on the same file system, then deleted. A restart finds marked folders still in place, or
entries in the trash, and finishes them: the purge resumes and nothing else is touched.
"""

from __future__ import annotations

import enum
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from scu_scp.admission import free_disk_bytes
from scu_scp.spool import Spool, fsync_dir
from worker.config import Settings
from worker.jobs.ops_store import OpsStore
from worker.jobs.store import FINAL_STATES, Job, JobState, JobStore, utc_now

log = logging.getLogger(__name__)

#: Trash folders (same file system as what they receive): a rename there is the commit.
SPOOL_TRASH = "purging"
RESULTS_TRASH = ".purging"
PULL_STAGING = "pulls"


class Kind(enum.StrEnum):
    DELIVERED_INPUTS = "delivered_inputs"
    DELIVERED_RESULTS = "delivered_results"
    FAILED_INPUTS = "failed_inputs"
    FAILED_RESULTS = "failed_results"
    PULL_STAGING = "pull_staging"
    JOB_RECORDS = "job_records"
    AUDIT_RECORDS = "audit_records"


_FAILED = (JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class PurgeItem:
    """One thing the purge removes: a folder (with its job, if any) or a job row."""

    kind: Kind
    name: str  # job id, pull staging folder name, or trash entry name
    path: Path | None
    bytes: int
    since: datetime  # what its age counts from
    job: Job | None = None
    why: str = "expired"  # expired, pressure, failed cap, resumed


@dataclass
class KindTotal:
    count: int = 0
    bytes: int = 0


@dataclass
class PurgeReport:
    """Counts and bytes per kind (never patient data): for the log, audit log and CLI."""

    dry_run: bool
    items: list[PurgeItem] = field(default_factory=list)
    audit_entries: int = 0
    free_bytes: int | None = None
    pressure: bool = False

    def totals(self) -> dict[Kind, KindTotal]:
        out: dict[Kind, KindTotal] = {}
        for item in self.items:
            total = out.setdefault(item.kind, KindTotal())
            total.count += 1
            total.bytes += item.bytes
        if self.audit_entries:
            out[Kind.AUDIT_RECORDS] = KindTotal(self.audit_entries, 0)
        return out

    def summary(self) -> str:
        parts = [f"{k.value} {t.count} ({t.bytes} bytes)" for k, t in self.totals().items()]
        return ", ".join(parts) or "nothing expired"


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is gone): what removing it frees."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return path.stat().st_size if path.is_file() else 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


def _hours(value: float) -> timedelta | None:
    """A retention period; None for 0, which keeps forever."""
    return timedelta(hours=value) if value > 0 else None


class Purger:
    """Plans and runs the purge over the job store, the spool and the results folders."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        ops: OpsStore,
        spool: Spool,
        *,
        now: Callable[[], datetime] = utc_now,
        free_bytes: Callable[[Path], int] = free_disk_bytes,
    ) -> None:
        self._settings = settings
        self._retention = settings.retention
        self._store = store
        self._ops = ops
        self._spool = spool
        self._results = settings.results_dir
        self._now = now
        self._free_bytes = free_bytes

    # -- paths ---------------------------------------------------------------------------

    def inputs_path(self, job: Job) -> Path:
        return self._spool.studies / job.id

    def results_path(self, job: Job) -> Path:
        return self._results / job.id

    def _trashes(self) -> tuple[Path, Path]:
        return self._spool.root / SPOOL_TRASH, self._results / RESULTS_TRASH

    # -- planning ------------------------------------------------------------------------

    def plan(self) -> PurgeReport:
        """What a purge would remove now (expired, safe), without removing anything."""
        report = PurgeReport(dry_run=True)
        report.items = list(self._resumed()) + list(self._expired())
        report.items += self._pull_staging()
        report.items += self._job_rows(report.items)
        report.audit_entries = self._audit_count()
        return report

    def _resumed(self) -> Iterator[PurgeItem]:
        """Trash entries a purge renamed away but did not finish deleting."""
        for trash in self._trashes():
            if not trash.is_dir():
                continue
            for entry in sorted(trash.iterdir()):
                try:
                    kind = Kind(entry.name.split(".", 1)[0])
                except ValueError:
                    kind = Kind.PULL_STAGING
                yield PurgeItem(
                    kind=kind,
                    name=entry.name,
                    path=entry,
                    bytes=tree_bytes(entry),
                    since=self._now(),
                    why="resumed",
                )

    def _job_items(self, why: str) -> list[PurgeItem]:
        """Every final job's folder still on disk, found from the folders (so a folder whose
        job is already marked purged is found too), oldest job first."""
        folders: list[tuple[Path, bool]] = []
        for root, is_inputs in ((self._spool.studies, True), (self._results, False)):
            if root.is_dir():
                folders += [(p, is_inputs) for p in root.iterdir() if p.is_dir()]
        jobs = self._store.find_many(sorted({p.name for p, _ in folders}))
        items = []
        for path, is_inputs in folders:
            job = jobs.get(path.name)
            if job is None or job.state not in FINAL_STATES:
                continue  # no job yet (the dispatcher recovers it) or work in progress
            failed = job.state in _FAILED
            if is_inputs:
                kind = Kind.FAILED_INPUTS if failed else Kind.DELIVERED_INPUTS
            else:
                kind = Kind.FAILED_RESULTS if failed else Kind.DELIVERED_RESULTS
            since = job.finished_at or job.updated_at or job.received_at
            items.append(PurgeItem(kind, job.id, path, tree_bytes(path), since, job, why))
        items.sort(key=lambda i: (i.since, i.name, i.kind.value))
        return items

    def _expired(self) -> Iterator[PurgeItem]:
        """Final jobs' folders past their retention, and the oldest failed ones over the cap."""
        r = self._retention
        now = self._now()
        grace = timedelta(hours=r.failed_grace_hours)
        failed_keep: list[PurgeItem] = []
        for item in self._job_items("expired"):
            job = item.job
            assert job is not None
            marked = (
                job.inputs_purged_at
                if item.kind in (Kind.DELIVERED_INPUTS, Kind.FAILED_INPUTS)
                else job.results_purged_at
            )
            if marked is not None:  # an earlier purge committed to it, then stopped
                yield replace(item, why="resumed")
                continue
            if job.state in _FAILED:
                period = _hours(r.failed_hours)
                if now - item.since < grace:  # never within the failure's grace
                    failed_keep.append(item)
                    continue
            elif item.kind is Kind.DELIVERED_INPUTS:
                period = _hours(r.delivered_inputs_hours)
            else:
                period = _hours(r.delivered_results_hours)
            if period is not None and now - item.since >= period:
                yield item
            elif job.state in _FAILED:
                failed_keep.append(item)
        yield from self._over_failed_cap(failed_keep)

    def _over_failed_cap(self, kept: list[PurgeItem]) -> Iterator[PurgeItem]:
        """Oldest failed data past its grace, while failed data holds more than the cap."""
        cap = self._retention.failed_max_bytes
        if not cap:
            return
        grace = timedelta(hours=self._retention.failed_grace_hours)
        now = self._now()
        held = sum(i.bytes for i in kept)
        for item in sorted(kept, key=lambda i: (i.since, i.name)):
            if held <= cap:
                return
            if now - item.since < grace:
                continue
            held -= item.bytes
            yield replace(item, why="failed cap")

    def _pull_staging(self) -> list[PurgeItem]:
        period = _hours(self._retention.pull_staging_hours)
        root = self._spool.root / PULL_STAGING
        if period is None or not root.is_dir():
            return []
        now = self._now()
        items = []
        for folder in sorted(root.iterdir()):
            # The newest write anywhere in it: a pull still fetching is not abandoned.
            newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=0.0)
            since = datetime.fromtimestamp(max(newest, folder.stat().st_mtime), now.tzinfo)
            if now - since >= period:
                items.append(
                    PurgeItem(Kind.PULL_STAGING, folder.name, folder, tree_bytes(folder), since)
                )
        return items

    def _records_cutoff(self) -> datetime | None:
        days = self._retention.job_records_days
        return self._now() - timedelta(days=days) if days > 0 else None

    def _job_rows(self, planned: Iterable[PurgeItem]) -> list[PurgeItem]:
        """Expired job rows whose folders are gone or go in this purge (else recover() would
        see a sealed batch without a job and run it again)."""
        cutoff = self._records_cutoff()
        if cutoff is None:
            return []
        going = {i.path for i in planned if i.path is not None}
        rows = []
        for job in self._store.finished_before(cutoff):
            folders = (self.inputs_path(job), self.results_path(job))
            if all(p in going or not p.exists() for p in folders):
                since = job.finished_at or job.received_at
                rows.append(PurgeItem(Kind.JOB_RECORDS, job.id, None, 0, since, job))
        return rows

    def _audit_count(self) -> int:
        cutoff = self._records_cutoff()
        return self._ops.count_audit_before(cutoff) if cutoff else 0

    def _pressure_items(self, free: int, threshold: int, taken: set[Path]) -> list[PurgeItem]:
        """Done jobs' data before it expires, oldest first, until ``threshold`` is free."""
        items = [
            i
            for i in self._job_items("pressure")
            if i.job is not None and i.job.state is JobState.DONE and i.path not in taken
        ]
        items.sort(key=lambda i: (i.since, i.kind is Kind.DELIVERED_RESULTS, i.name))
        chosen = []
        for item in items:
            if free >= threshold:
                break
            chosen.append(item)
            free += item.bytes
        return chosen

    # -- running -------------------------------------------------------------------------

    def release_delivered_inputs(self, job: Job) -> int:
        """Under disk pressure, a job just delivered gives back its received images at once.

        The worker calls this after ``mark_done``: queued studies get the room at the moment
        it is free, not at the SCP process's next look. Bytes freed; 0 without pressure.
        """
        threshold = self._retention.effective_pressure_free_bytes(
            self._settings.scp.min_free_disk_bytes
        )
        path = self.inputs_path(job)
        if not threshold or job.state is not JobState.DONE or not path.is_dir():
            return 0
        if self._free_bytes(self._spool.root) >= threshold:
            return 0
        since = job.finished_at or self._now()
        item = PurgeItem(Kind.DELIVERED_INPUTS, job.id, path, tree_bytes(path), since, job)
        item = replace(item, why="pressure")
        if not self._remove(item):
            return 0
        summary = PurgeReport(dry_run=False, items=[item], pressure=True).summary()
        log.info("disk pressure: purge removed: %s", summary)
        self._ops.audit("disk pressure", "purge", "retention", summary)
        return item.bytes

    def run(self, *, dry_run: bool = False, actor: str = "purge") -> PurgeReport:
        """Remove the planned set (or, ``dry_run``, only list it); log and audit the totals."""
        report = self.plan()
        report.dry_run = dry_run
        threshold = self._retention.effective_pressure_free_bytes(
            self._settings.scp.min_free_disk_bytes
        )
        if threshold:
            free = self._free_bytes(self._spool.root)
            report.free_bytes = free
            expected = free + sum(i.bytes for i in report.items)
            if expected < threshold:
                report.pressure = True
                taken = {i.path for i in report.items if i.path is not None}
                extra = self._pressure_items(expected, threshold, taken)
                rows = [i for i in report.items if i.kind is Kind.JOB_RECORDS]
                report.items = [i for i in report.items if i.kind is not Kind.JOB_RECORDS]
                report.items += extra + rows
        if dry_run:
            log.info("purge (dry run) would remove: %s", report.summary())
            return report
        done = [item for item in report.items if self._remove(item)]
        report.items = done
        cutoff = self._records_cutoff()
        report.audit_entries = self._ops.delete_audit_before(cutoff) if cutoff else 0
        if report.items or report.audit_entries:
            log.info("purge removed: %s", report.summary())
            self._ops.audit(actor, "purge", "retention", report.summary())
        return report

    def _remove(self, item: PurgeItem) -> bool:
        """Remove one item; False if its job changed state since the plan (left alone)."""
        job = item.job
        if item.kind is Kind.JOB_RECORDS:
            assert job is not None
            cutoff = self._records_cutoff()
            return cutoff is not None and self._store.delete_finished(job.id, cutoff)
        if job is not None and item.why != "resumed":
            # A failed job loses both at once: retry then refuses, rather than re-running
            # on inputs while its results folder is being removed.
            inputs = item.kind in (Kind.DELIVERED_INPUTS, Kind.FAILED_INPUTS) or (
                job.state in _FAILED
            )
            results = item.kind is not Kind.DELIVERED_INPUTS
            if not self._store.mark_purged(job.id, job.state, inputs=inputs, results=results):
                log.info("purge: job %s changed state since the plan; kept", job.id)
                return False
        assert item.path is not None
        self._discard(item)
        return True

    def _discard(self, item: PurgeItem) -> None:
        """Rename into the trash (the commit), then delete; a crash between resumes later."""
        assert item.path is not None
        spool_trash, results_trash = self._trashes()
        trash = results_trash if item.path.is_relative_to(self._results) else spool_trash
        if item.path.parent != trash:
            trash.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = trash / f"{item.kind.value}.{item.name}.{secrets.token_hex(4)}"
            try:
                item.path.rename(target)
            except FileNotFoundError:
                return  # already gone
            fsync_dir(item.path.parent)
            fsync_dir(trash)
        else:
            target = item.path
        try:
            shutil.rmtree(target)
        except FileNotFoundError:  # another purge (the CLI beside `up`) is removing it too
            log.info("purge: %s already being removed", target.name)
