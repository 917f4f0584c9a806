"""The job store under test: a real SQLite file and, where one answers, a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.jobs import postgres_url
from worker.jobs.store import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        s = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
        yield s
        s.close()
        return
    database = postgres_url()
    s = JobStore(next(database))
    yield s
    s.close()
    database.close()  # drops the test database
