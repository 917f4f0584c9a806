"""Job store schema migrations (Alembic), run by the store itself when it opens the database.

Every process (SCP, workers, monitor) opens the store, so the upgrade takes a lock first:
a file lock beside a SQLite database, an advisory lock on PostgreSQL. A database created
before migrations existed (tables, no ``alembic_version``) is stamped at the first revision,
then upgraded, so its rows are kept.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
_PG_LOCK_KEY = 0x70616E6E  # any constant: one advisory lock for this schema's migrations


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``; cheap when it is already there."""
    if engine.dialect.name == "sqlite":
        with _sqlite_file_lock(engine), engine.begin() as conn:
            _upgrade(conn, revision)
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        _upgrade(conn, revision)


def _upgrade(conn: Connection, revision: str) -> None:
    current = MigrationContext.configure(conn).get_current_revision()
    if revision == "head" and current == head_revision():
        return
    cfg = alembic_config(conn)
    if current is None and inspect(conn).has_table("jobs"):
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, revision)
    target = head_revision() if revision == "head" else revision
    log.info("job store schema upgraded from %s to %s", current or "an empty database", target)
