"""The job store: one row per sealed study batch, the admin's record of what happened to it."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.expression import and_, or_, update


class JobState(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED})


class UnknownJobError(KeyError):
    """No job has that id."""


def _now() -> datetime:
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
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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
    updated_at: datetime | None = None

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
            updated_at=_aware(row.updated_at),
        )


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
        _Base.metadata.create_all(self._engine)

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
                    updated_at=_now(),
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
        self, *, states: Sequence[JobState] = (), study_uid: str | None = None, limit: int = 100
    ) -> list[Job]:
        query = select(_JobRow).order_by(_JobRow.received_at.desc(), _JobRow.id.desc())
        if states:
            query = query.where(_JobRow.state.in_([s.value for s in states]))
        if study_uid:
            query = query.where(_JobRow.study_uid == study_uid)
        with self._session() as s:
            return [Job._from_row(r) for r in s.scalars(query.limit(limit))]

    def _update(self, job_id: str, **fields: Any) -> Job:
        with self._session() as s:
            row = s.get(_JobRow, job_id, with_for_update=True)
            if row is None:
                raise UnknownJobError(job_id)
            for key, value in fields.items():
                setattr(row, key, value.value if isinstance(value, JobState) else value)
            row.updated_at = _now()
            s.flush()
            return Job._from_row(row)

    def mark_queued(self, job_id: str) -> Job:
        return self._update(job_id, state=JobState.QUEUED, queued_at=_now(), error=None)

    def mark_running(self, job_id: str) -> Job:
        job = self.get(job_id)
        return self._update(
            job_id, state=JobState.RUNNING, started_at=_now(), attempts=job.attempts + 1
        )

    def claim(self, job_id: str, *, lease_seconds: float) -> Job | None:
        """Mark the job running for this worker, unless another worker holds it.

        One atomic UPDATE: a waiting job, or a running one whose lease (``updated_at``,
        refreshed by ``touch``) is older than ``lease_seconds``. None: not claimable.
        """
        now = _now()
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

    def touch(self, job_id: str) -> None:
        """Refresh a job's ``updated_at``: the running worker's lease, or a re-queue time."""
        with self._session() as s:
            s.execute(
                update(_JobRow)
                .where(_JobRow.id == job_id, _JobRow.state.not_in([f.value for f in FINAL_STATES]))
                .values(updated_at=_now())
                .execution_options(synchronize_session=False)
            )

    def mark_delivering(
        self, job_id: str, *, pipelines: Sequence[str], outcomes: Sequence[dict[str, Any]]
    ) -> Job:
        return self._update(
            job_id, state=JobState.DELIVERING, pipelines=list(pipelines), outcomes=list(outcomes)
        )

    def mark_retrying(self, job_id: str, reason: str) -> Job:
        """A transient failure: the job is queued again and says why."""
        return self._update(job_id, state=JobState.QUEUED, error=reason)

    def mark_done(self, job_id: str, *, delivered: Sequence[dict[str, Any]]) -> Job:
        return self._update(
            job_id, state=JobState.DONE, delivered=list(delivered), error=None, finished_at=_now()
        )

    def mark_failed(
        self, job_id: str, reason: str, *, delivered: Sequence[dict[str, Any]] = ()
    ) -> Job:
        return self._update(
            job_id,
            state=JobState.FAILED,
            error=reason,
            delivered=list(delivered),
            finished_at=_now(),
        )
