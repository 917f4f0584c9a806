"""The job store: one row per sealed study batch, the admin's record of what happened to it."""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import ColumnElement, and_

from worker.jobs.migrations import upgrade_schema


class JobState(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class UnknownJobError(KeyError):
    """No job has that id."""


def utc_now() -> datetime:
    """Now, timezone-aware: every timestamp in the job database is UTC."""
    return datetime.now(UTC)


class _Base(DeclarativeBase):
    pass


class _JobRow(_Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    spool_path: Mapped[str] = mapped_column(Text)
    instance_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    pipelines: Mapped[list[str]] = mapped_column(JSON, default=list)
    outcomes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    delivered: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivering_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    delivery_failures: Mapped[int] = mapped_column(Integer, default=0)
    inputs_purged_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    results_purged_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # Set when a worker process takes the job's message (worker/run/heartbeat.py).
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row."""

    id: str
    study_uid: str
    accession_number: str
    calling_ae: str
    spool_path: str
    instance_count: int
    state: JobState
    attempts: int
    error: str | None
    pipelines: tuple[str, ...]
    outcomes: tuple[dict[str, Any], ...]
    delivered: tuple[dict[str, Any], ...]
    received_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    delivering_at: datetime | None = None
    delivery_failures: int = 0

    def stage_seconds(self) -> dict[str, float]:
        """How long each finished stage took: waiting in the queue, processing, delivering.

        For a retried job these are its last attempt's stages.
        """
        spans = {
            "queue_wait": (self.queued_at, self.started_at),
            "processing": (self.started_at, self.delivering_at or self.finished_at),
            "delivery": (self.delivering_at, self.finished_at),
        }
        return {
            name: (end - start).total_seconds()
            for name, (start, end) in spans.items()
            if start is not None and end is not None and end >= start
        }

    @property
    def duration_seconds(self) -> float | None:
        """From received to a final state."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.received_at).total_seconds()

    updated_at: datetime | None = None
    # Set by the retention purge (worker/jobs/retention.py): the data is gone from disk.
    inputs_purged_at: datetime | None = None
    results_purged_at: datetime | None = None
    # The Celery queue its last attempt was taken from and the worker process (host/pid)
    # that took it; None until a worker picks it up (and for jobs from before 0004).
    queue: str | None = None
    worker: str | None = None

    @classmethod
    def _from_row(cls, row: _JobRow) -> Job:
        return cls(
            id=row.id,
            study_uid=row.study_uid,
            accession_number=row.accession_number,
            calling_ae=row.calling_ae,
            spool_path=row.spool_path,
            instance_count=row.instance_count,
            state=JobState(row.state),
            attempts=row.attempts,
            error=row.error,
            pipelines=tuple(row.pipelines or ()),
            outcomes=tuple(row.outcomes or ()),
            delivered=tuple(row.delivered or ()),
            received_at=_aware(row.received_at),
            queued_at=_aware(row.queued_at),
            started_at=_aware(row.started_at),
            finished_at=_aware(row.finished_at),
            delivering_at=_aware(row.delivering_at),
            delivery_failures=row.delivery_failures or 0,
            updated_at=_aware(row.updated_at),
            inputs_purged_at=_aware(row.inputs_purged_at),
            results_purged_at=_aware(row.results_purged_at),
            queue=row.queue,
            worker=row.worker,
        )


def iso(value: datetime | None) -> str | None:
    """A timestamp as JSON: ISO 8601, or null."""
    return value.isoformat() if value else None


def job_record(job: Job) -> dict[str, Any]:
    """A job as JSON: the monitor's API returns it, ``jobs --json`` prints a part of it."""
    return {
        "id": job.id,
        "state": job.state.value,
        "study_uid": job.study_uid,
        "accession_number": job.accession_number,
        "calling_ae": job.calling_ae,
        "instances": job.instance_count,
        "attempts": job.attempts,
        "error": job.error,
        "pipelines": list(job.pipelines),
        "received_at": iso(job.received_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "delivering_at": iso(job.delivering_at),
        "finished_at": iso(job.finished_at),
        "duration_seconds": job.duration_seconds,
        "stage_seconds": job.stage_seconds(),
        "delivery_failures": job.delivery_failures,
        "outcomes": list(job.outcomes),
        "delivered": list(job.delivered),
        "inputs_purged_at": iso(job.inputs_purged_at),
        "results_purged_at": iso(job.results_purged_at),
        "queue": job.queue,
        "worker": job.worker,
    }


def _aware(value: Any) -> Any:
    # SQLite hands timezone-aware columns back naive; they were written in UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the SCP process and the workers write without "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    return engine


class JobStore:
    """All reads and writes of job rows. Safe to use from several processes."""

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        # Alembic, not create_all: an existing database is upgraded and keeps its rows.
        upgrade_schema(self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def create(
        self,
        *,
        job_id: str,
        study_uid: str,
        accession_number: str,
        calling_ae: str,
        spool_path: str,
        instance_count: int,
        received_at: datetime,
    ) -> Job:
        """Record a new job; creating the same id again returns the existing job."""
        with self._session() as s:
            row = s.get(_JobRow, job_id)
            if row is None:
                row = _JobRow(
                    id=job_id,
                    study_uid=study_uid,
                    accession_number=accession_number,
                    calling_ae=calling_ae,
                    spool_path=spool_path,
                    instance_count=instance_count,
                    state=JobState.RECEIVED.value,
                    attempts=0,
                    pipelines=[],
                    outcomes=[],
                    delivered=[],
                    received_at=received_at,
                    updated_at=utc_now(),
                )
                s.add(row)
                s.flush()
            return Job._from_row(row)

    def get(self, job_id: str) -> Job:
        with self._session() as s:
            row = s.get(_JobRow, job_id)
            if row is None:
                raise UnknownJobError(job_id)
            return Job._from_row(row)

    def find(self, job_id: str) -> Job | None:
        try:
            return self.get(job_id)
        except UnknownJobError:
            return None

    def list(
        self,
        *,
        states: Sequence[JobState] = (),
        study_uid: str | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Newest first; ``search`` matches part of an accession number, study UID or job id."""
        query = select(_JobRow).order_by(_JobRow.received_at.desc(), _JobRow.id.desc())
        if states:
            query = query.where(_JobRow.state.in_([s.value for s in states]))
        if study_uid:
            query = query.where(_JobRow.study_uid == study_uid)
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
            query = query.where(
                or_(
                    _JobRow.accession_number.like(pattern, escape="\\"),
                    _JobRow.study_uid.like(pattern, escape="\\"),
                    _JobRow.id.like(pattern, escape="\\"),
                )
            )
        with self._session() as s:
            return [Job._from_row(r) for r in s.scalars(query.limit(limit).offset(offset))]

    def counts(self) -> dict[JobState, int]:
        """Jobs per state, every state present (zero when none)."""
        query = select(_JobRow.state, func.count()).group_by(_JobRow.state)
        with self._session() as s:
            found = {JobState(state): int(n) for state, n in s.execute(query)}
        return {state: found.get(state, 0) for state in JobState}

    def totals(self) -> tuple[int, int]:
        """(instances in all jobs, delivery failures so far): monotonic, for /metrics."""
        query = select(
            func.coalesce(func.sum(_JobRow.instance_count), 0),
            func.coalesce(func.sum(_JobRow.delivery_failures), 0),
        )
        with self._session() as s:
            instances, failures = s.execute(query).one()
        return int(instances), int(failures)

    def finished(self, limit: int = 10000, *, since: datetime | None = None) -> builtins.list[Job]:
        """Jobs in a final state, most recent first: what duration histograms are built from.

        ``since``: only those that finished at or after it (the dashboard's last 24 hours).
        """
        query = select(_JobRow).where(_JobRow.finished_at.is_not(None))
        if since is not None:
            query = query.where(_JobRow.finished_at >= since)
        query = query.order_by(_JobRow.finished_at.desc()).limit(limit)
        with self._session() as s:
            return [Job._from_row(r) for r in s.scalars(query)]

    def _transition(
        self,
        job_id: str,
        from_states: Sequence[JobState],
        *conditions: ColumnElement[bool],
        **fields: Any,
    ) -> bool:
        """Change a job only if it is still in one of ``from_states`` (no lost races)."""
        values = {k: v.value if isinstance(v, JobState) else v for k, v in fields.items()}
        values["updated_at"] = utc_now()
        query = (
            update(_JobRow)
            .where(
                _JobRow.id == job_id,
                _JobRow.state.in_([s.value for s in from_states]),
                *conditions,
            )
            .values(**values)
        )
        with self._session() as s:
            result = s.execute(query)
            changed = result.rowcount if isinstance(result, CursorResult) else 0
        if not changed:
            self.get(job_id)  # raises UnknownJobError for a missing job
        return bool(changed)

    def reset_for_retry(self, job_id: str) -> bool:
        """A failed or cancelled job goes back to queued; False if it is in another state
        or its received instances were purged (nothing left to run on)."""
        return self._transition(
            job_id,
            (JobState.FAILED, JobState.CANCELLED),
            _JobRow.inputs_purged_at.is_(None),
            state=JobState.QUEUED,
            error=None,
            queued_at=utc_now(),
            started_at=None,
            delivering_at=None,
            finished_at=None,
        )

    def cancel(self, job_id: str, reason: str) -> bool:
        """A job not yet started is cancelled; False if it already runs or has finished."""
        return self._transition(
            job_id,
            (JobState.RECEIVED, JobState.QUEUED),
            state=JobState.CANCELLED,
            error=reason,
            finished_at=utc_now(),
        )

    def _update(self, job_id: str, **fields: Any) -> Job:
        with self._session() as s:
            row = s.get(_JobRow, job_id, with_for_update=True)
            if row is None:
                raise UnknownJobError(job_id)
            for key, value in fields.items():
                setattr(row, key, value.value if isinstance(value, JobState) else value)
            row.updated_at = utc_now()
            s.flush()
            return Job._from_row(row)

    def mark_queued(self, job_id: str) -> Job:
        return self._update(job_id, state=JobState.QUEUED, queued_at=utc_now(), error=None)

    def claim(self, job_id: str, *, lease_seconds: float) -> Job | None:
        """Mark the job running for this worker, unless another worker holds it.

        One atomic UPDATE: a waiting job, or a running one whose lease (``updated_at``,
        refreshed by ``touch``) is older than ``lease_seconds``. None: not claimable.
        """
        now = utc_now()
        active = [JobState.RUNNING.value, JobState.DELIVERING.value]
        waiting = [JobState.RECEIVED.value, JobState.QUEUED.value]
        stale = now - timedelta(seconds=lease_seconds)
        stmt = (
            update(_JobRow)
            .where(
                _JobRow.id == job_id,
                or_(
                    _JobRow.state.in_(waiting),
                    and_(_JobRow.state.in_(active), _JobRow.updated_at < stale),
                ),
            )
            .values(
                state=JobState.RUNNING.value,
                started_at=now,
                attempts=_JobRow.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        with self._session() as s:
            claimed = s.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
        return self.get(job_id) if claimed else None

    def note_pickup(self, job_id: str, *, worker: str, queue: str) -> bool:
        """Record which worker process took a waiting job's message, from which queue.

        Only while the job still waits: a duplicate message reaching a second worker while
        the first runs the job changes nothing. False when the job was not waiting.
        """
        waiting = (JobState.RECEIVED, JobState.QUEUED)
        return self._transition(job_id, waiting, worker=worker[:255], queue=queue[:64])

    def finished_per_worker(self, since: datetime) -> dict[str, int]:
        """Jobs each worker process brought to a final state since ``since`` (jobs per hour)."""
        query = (
            select(_JobRow.worker, func.count())
            .where(_JobRow.finished_at >= since, _JobRow.worker.is_not(None))
            .group_by(_JobRow.worker)
        )
        with self._session() as s:
            return {str(name): int(n) for name, n in s.execute(query)}

    def touch(self, job_id: str) -> None:
        """Refresh a job's ``updated_at``: the running worker's lease, or a re-queue time."""
        with self._session() as s:
            s.execute(
                update(_JobRow)
                .where(_JobRow.id == job_id, _JobRow.state.not_in([f.value for f in FINAL_STATES]))
                .values(updated_at=utc_now())
                .execution_options(synchronize_session=False)
            )

    def mark_delivering(
        self, job_id: str, *, pipelines: Sequence[str], outcomes: Sequence[dict[str, Any]]
    ) -> Job:
        return self._update(
            job_id,
            state=JobState.DELIVERING,
            pipelines=list(pipelines),
            outcomes=list(outcomes),
            delivering_at=utc_now(),
        )

    def mark_delivery_failed(self, job_id: str, reason: str) -> Job:
        """A delivery attempt failed (counted for /metrics); the job waits for its retry."""
        job = self.get(job_id)
        return self._update(
            job_id,
            state=JobState.QUEUED,
            error=reason,
            delivery_failures=job.delivery_failures + 1,
        )

    def mark_retrying(self, job_id: str, reason: str) -> Job:
        """The job is queued again (a retry, another queue) and says why."""
        return self._update(job_id, state=JobState.QUEUED, error=reason)

    def mark_done(self, job_id: str, *, delivered: Sequence[dict[str, Any]]) -> Job:
        return self._update(
            job_id,
            state=JobState.DONE,
            delivered=list(delivered),
            error=None,
            finished_at=utc_now(),
        )

    def mark_failed(
        self,
        job_id: str,
        reason: str,
        *,
        delivered: Sequence[dict[str, Any]] = (),
    ) -> Job:
        return self._update(
            job_id,
            state=JobState.FAILED,
            error=reason,
            delivered=list(delivered),
            finished_at=utc_now(),
        )

    # -- retention (worker/jobs/retention.py) --------------------------------------------

    def find_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of these ids that exist, by id (one query per 500 ids)."""
        found: dict[str, Job] = {}
        with self._session() as s:
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start : start + 500]
                for row in s.scalars(select(_JobRow).where(_JobRow.id.in_(chunk))):
                    found[row.id] = Job._from_row(row)
        return found

    def finished_before(self, cutoff: datetime) -> builtins.list[Job]:
        """Final jobs that finished before ``cutoff``, oldest first: rows that may expire."""
        query = (
            select(_JobRow)
            .where(
                _JobRow.state.in_([s.value for s in FINAL_STATES]),
                _JobRow.finished_at < cutoff,
            )
            .order_by(_JobRow.finished_at, _JobRow.id)
        )
        with self._session() as s:
            return [Job._from_row(r) for r in s.scalars(query)]

    def mark_purged(self, job_id: str, state: JobState, *, inputs: bool, results: bool) -> bool:
        """Record that a final job's inputs and/or results are being purged.

        Only while the job is still in ``state``: a retry that got in first wins, and
        the purge leaves its files alone. Written before the files go, so a restart
        mid-purge finds the mark and finishes the removal.
        """
        now = utc_now()
        fields: dict[str, Any] = {}
        if inputs:
            fields["inputs_purged_at"] = func.coalesce(_JobRow.inputs_purged_at, now)
        if results:
            fields["results_purged_at"] = func.coalesce(_JobRow.results_purged_at, now)
        if not fields:
            return True
        query = (
            update(_JobRow)
            .where(_JobRow.id == job_id, _JobRow.state == state.value)
            .values(**fields)
            .execution_options(synchronize_session=False)
        )
        with self._session() as s:
            result = s.execute(query)
            return bool(result.rowcount if isinstance(result, CursorResult) else 0)

    def delete_finished(self, job_id: str, cutoff: datetime) -> bool:
        """Delete a final job row that finished before ``cutoff`` (metadata retention)."""
        query = delete(_JobRow).where(
            _JobRow.id == job_id,
            _JobRow.state.in_([s.value for s in FINAL_STATES]),
            _JobRow.finished_at < cutoff,
        )
        with self._session() as s:
            result = s.execute(query)
            return bool(result.rowcount if isinstance(result, CursorResult) else 0)
