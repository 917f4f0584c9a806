"""Operational records beside the jobs: audit log, worker heartbeats and admin controls.

They share the job database (and its migrations) so every process sees them: the monitor
writes a control request, the SCP process applies it; workers write heartbeats, the monitor
reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, Integer, String, Text, delete, func, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from worker.jobs.store import _aware, _Base, utc_now

INTAKE_PAUSED = "intake_paused"
FORCE_COMPLETE = "force_complete"


class _AuditRow(_Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text)


class _WorkerRow(_Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    device: Mapped[str] = mapped_column(String(64))
    queues: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    current_job: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _FlagRow(_Base):
    __tablename__ = "control_flags"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(128))


class _RequestRow(_Base):
    __tablename__ = "control_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    study_uid: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requested_by: Mapped[str] = mapped_column(String(128))
    handled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    detail: str


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    device: str
    queues: tuple[str, ...]
    pid: int
    current_job: str | None
    started_at: datetime
    last_seen: datetime
    host: str = ""

    def online(self, now: datetime, stale_after: float) -> bool:
        return (now - self.last_seen).total_seconds() <= stale_after


class OpsStore:
    """Audit log, heartbeats and controls on the job store's engine (schema already migrated)."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- audit --------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        with self._session() as s:
            s.add(_AuditRow(at=utc_now(), actor=actor, action=action, target=target, detail=detail))

    def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        query = select(_AuditRow).order_by(_AuditRow.id.desc()).limit(limit)
        with self._session() as s:
            return [
                AuditEntry(_aware(r.at), r.actor, r.action, r.target, r.detail)
                for r in s.scalars(query)
            ]

    def delete_audit_before(self, cutoff: datetime) -> int:
        """Drop audit entries older than ``cutoff`` (retention.job_records_days)."""
        with self._session() as s:
            result = s.execute(delete(_AuditRow).where(_AuditRow.at < cutoff))
            return int(result.rowcount if isinstance(result, CursorResult) else 0)

    def count_audit_before(self, cutoff: datetime) -> int:
        """How many audit entries are older than ``cutoff`` (what a dry run would drop)."""
        query = select(func.count()).select_from(_AuditRow).where(_AuditRow.at < cutoff)
        with self._session() as s:
            return int(s.execute(query).scalar_one())

    # -- heartbeats ---------------------------------------------------------------------

    def heartbeat(
        self,
        name: str,
        *,
        device: str,
        queues: tuple[str, ...],
        pid: int,
        current_job: str | None,
        started_at: datetime,
        host: str = "",
    ) -> None:
        with self._session() as s:
            row = s.get(_WorkerRow, name, with_for_update=True)
            if row is None:
                row = _WorkerRow(name=name, started_at=started_at)
                s.add(row)
            row.host = host
            row.device = device
            row.queues = ",".join(queues)
            row.pid = pid
            row.current_job = current_job
            row.started_at = started_at
            row.last_seen = utc_now()

    def forget_worker(self, name: str) -> None:
        with self._session() as s:
            s.execute(delete(_WorkerRow).where(_WorkerRow.name == name))

    def workers(self, *, seen_within: float | None = None) -> list[WorkerStatus]:
        query = select(_WorkerRow).order_by(_WorkerRow.name)
        if seen_within is not None:
            query = query.where(_WorkerRow.last_seen >= utc_now() - timedelta(seconds=seen_within))
        with self._session() as s:
            return [
                WorkerStatus(
                    name=r.name,
                    device=r.device,
                    queues=tuple(q for q in r.queues.split(",") if q),
                    pid=r.pid,
                    current_job=r.current_job,
                    started_at=_aware(r.started_at),
                    last_seen=_aware(r.last_seen),
                    host=r.host or "",
                )
                for r in s.scalars(query)
            ]

    # -- controls -----------------------------------------------------------------------

    def set_intake_paused(self, paused: bool, actor: str) -> None:
        with self._session() as s:
            row = s.get(_FlagRow, INTAKE_PAUSED, with_for_update=True)
            if row is None:
                row = _FlagRow(name=INTAKE_PAUSED)
                s.add(row)
            row.value = "true" if paused else "false"
            row.updated_at = utc_now()
            row.updated_by = actor

    def intake_paused(self) -> bool:
        with self._session() as s:
            row = s.get(_FlagRow, INTAKE_PAUSED)
            return row is not None and row.value == "true"

    def request_force_complete(self, study_uid: str, actor: str) -> None:
        with self._session() as s:
            s.add(
                _RequestRow(
                    kind=FORCE_COMPLETE,
                    study_uid=study_uid,
                    requested_at=utc_now(),
                    requested_by=actor,
                )
            )

    def take_force_complete_requests(self) -> list[str]:
        """Study UIDs asked to complete now; each request is handed out once."""
        with self._session() as s:
            rows = list(
                s.scalars(
                    select(_RequestRow)
                    .where(_RequestRow.kind == FORCE_COMPLETE, _RequestRow.handled_at.is_(None))
                    .order_by(_RequestRow.id)
                    .with_for_update()
                )
            )
            if rows:
                s.execute(
                    update(_RequestRow)
                    .where(_RequestRow.id.in_([r.id for r in rows]))
                    .values(handled_at=utc_now())
                )
            return [r.study_uid for r in rows]
