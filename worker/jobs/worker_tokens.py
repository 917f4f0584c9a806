"""Credentials of remote workers: one token per worker name, kept as a hash, revocable.

A remote worker (see ``worker/run/transfer.py``) presents its token to the central node's
study API (``worker/monitor/study_api.py``) for every request. The token is 256 random bits,
so a plain SHA-256 of it is as safe to store as a slow password hash, and it can be looked
up by its hash in one indexed query per request. ``revoke`` takes effect at the next request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, String, select, update
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from worker.jobs.store import _aware, _Base, utc_now

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Tokens start with this, so a leaked one is recognisable in a secret scanner's rules.
PREFIX = "pawt_"
#: ``last_used_at`` is written at most this often per token (one UPDATE, not one per file).
_USE_RESOLUTION = timedelta(seconds=60)


class TokenError(ValueError):
    """A token cannot be created or revoked as asked; the message says why."""


class _TokenRow(_Base):
    __tablename__ = "worker_tokens"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class WorkerToken:
    """What an admin sees of a token: never the token itself."""

    name: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TokenError(
            f"a worker name is 1-64 letters, digits, '_', '.' or '-', not {name[:80]!r}"
        )
    return name


class WorkerTokenStore:
    """Create, list, revoke and check remote workers' tokens in the job database."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(self, name: str, actor: str, *, replace: bool = False) -> str:
        """A new token for ``name``; shown once, only its hash is kept.

        A name whose token is active is refused unless ``replace`` (the old token stops
        working at once). A revoked name may be given a new token.
        """
        check_name(name)
        token = PREFIX + secrets.token_urlsafe(32)
        with self._sessions.begin() as s:
            row = s.get(_TokenRow, name, with_for_update=True)
            if row is not None and row.revoked_at is None and not replace:
                raise TokenError(
                    f"worker {name} already has an active token: revoke it first, "
                    "or create with --replace"
                )
            if row is None:
                row = _TokenRow(name=name)
                s.add(row)
            row.token_hash = token_hash(token)
            row.created_at = utc_now()
            row.created_by = actor
            row.last_used_at = None
            row.revoked_at = None
        return token

    def list(self) -> list[WorkerToken]:
        with self._sessions.begin() as s:
            rows = s.scalars(select(_TokenRow).order_by(_TokenRow.name))
            return [_token(r) for r in rows]

    def revoke(self, name: str) -> bool:
        """Revoke ``name``'s token; False if it has none or it is already revoked."""
        query = (
            update(_TokenRow)
            .where(_TokenRow.name == name, _TokenRow.revoked_at.is_(None))
            .values(revoked_at=utc_now())
        )
        with self._sessions.begin() as s:
            result = s.execute(query)
            return bool(result.rowcount if isinstance(result, CursorResult) else 0)

    def check(self, token: str) -> str | None:
        """The worker name of an active token, else None (unknown, revoked, malformed)."""
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        now = utc_now()
        with self._sessions.begin() as s:
            row = s.scalars(
                select(_TokenRow).where(_TokenRow.token_hash == token_hash(token))
            ).one_or_none()
            if row is None or row.revoked_at is not None:
                return None
            last = _aware(row.last_used_at)
            if last is None or now - last > _USE_RESOLUTION:
                row.last_used_at = now
            return row.name


def _token(row: _TokenRow) -> WorkerToken:
    return WorkerToken(
        name=row.name,
        created_at=_aware(row.created_at),
        created_by=row.created_by,
        last_used_at=_aware(row.last_used_at),
        revoked_at=_aware(row.revoked_at),
    )
