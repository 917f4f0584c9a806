"""Remote workers' tokens: only hashes stored, one active token per name, revocable at once."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from worker.jobs.store import JobStore
from worker.jobs.worker_tokens import PREFIX, TokenError, WorkerTokenStore


def test_token_checks_until_revoked(store: JobStore) -> None:
    tokens = WorkerTokenStore(store.engine)
    token = tokens.create("gpu-1", "cli:admin")
    assert token.startswith(PREFIX) and len(token) > 40
    assert tokens.check(token) == "gpu-1"
    assert tokens.check(token + "x") is None
    assert tokens.check("not-a-token") is None
    [listed] = tokens.list()
    assert listed.name == "gpu-1" and listed.active and listed.last_used_at is not None

    assert tokens.revoke("gpu-1")
    assert tokens.check(token) is None
    assert not tokens.revoke("gpu-1"), "already revoked"
    assert not tokens.list()[0].active


def test_only_the_hash_is_stored(store: JobStore) -> None:
    tokens = WorkerTokenStore(store.engine)
    token = tokens.create("gpu-1", "cli:admin")
    with store.engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(text("SELECT * FROM worker_tokens"))]
    assert stored and all(token not in str(value) for value in stored[0])


def test_one_active_token_per_name(store: JobStore) -> None:
    tokens = WorkerTokenStore(store.engine)
    first = tokens.create("gpu-1", "cli:admin")
    with pytest.raises(TokenError, match="already has an active token"):
        tokens.create("gpu-1", "cli:admin")
    second = tokens.create("gpu-1", "cli:admin", replace=True)
    assert tokens.check(first) is None and tokens.check(second) == "gpu-1"
    tokens.revoke("gpu-1")
    third = tokens.create("gpu-1", "cli:admin")  # a revoked name may get a new token
    assert tokens.check(third) == "gpu-1"


@pytest.mark.parametrize("name", ["", "-x", "a b", "../x", "x" * 65])
def test_bad_names_refused(store: JobStore, name: str) -> None:
    with pytest.raises(TokenError, match="worker name"):
        WorkerTokenStore(store.engine).create(name, "cli:admin")
