"""Session cookies, the server-side session store, the login back-off and stored secrets."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner

from worker.monitor.auth import Credentials, TokenChecker, check_login, hash_secret, verify_secret
from worker.monitor.sessions import LoginThrottle, SessionStore


def _creds(secret: bytes, password: str = "pw") -> Credentials:
    return Credentials("admin", hash_secret(password), "", secret)


def test_session_cookie_is_refused_when_forged_foreign_or_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = SessionStore(tmp_path / "a", _creds(b"a" * 32), max_age_seconds=3600)
    theirs = SessionStore(tmp_path / "b", _creds(b"b" * 32), max_age_seconds=3600)
    cookie = ours.open("admin")
    found = ours.find(cookie)
    assert found is not None and found.user == "admin"
    assert theirs.find(cookie) is None  # another secret
    unsigned = cookie.rsplit(".", 1)[0]  # sid.timestamp of the itsdangerous format
    assert ours.find(unsigned + ".AAAAAAAAAAAAAAAAAAAAAAAAAAA") is None  # made up
    assert ours.find(unsigned) is None  # no signature at all
    later = int(time.time()) + 5  # the signer's clock, moved on instead of waiting
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda _self: later)
    ours.max_age = 1
    assert ours.find(cookie) is None  # expired


def test_logout_ends_the_session_on_the_server(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, _creds(b"a" * 32), max_age_seconds=3600)
    kept, other = store.open("admin"), store.open("admin")
    store.close(kept)
    assert store.find(kept) is None  # a copy of the cookie is worth nothing now
    assert store.find(other) is not None  # another browser's session goes on
    # The file is named by a hash of the id: a listing of the directory hands out no cookie.
    assert all(len(p.name) == 64 or p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_new_password_or_secret_ends_every_session(tmp_path: Path) -> None:
    cookie = SessionStore(tmp_path, _creds(b"a" * 32, "old"), 3600).open("admin")
    assert SessionStore(tmp_path, _creds(b"a" * 32, "new"), 3600).find(cookie) is None
    cookie = SessionStore(tmp_path, _creds(b"a" * 32, "new"), 3600).open("admin")
    assert SessionStore(tmp_path, _creds(b"c" * 32, "new"), 3600).find(cookie) is None


def test_csrf_token_belongs_to_one_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, _creds(b"a" * 32), 3600)
    first, second = store.find(store.open("admin")), store.find(store.open("admin"))
    assert first is not None and second is not None
    assert store.csrf_ok(first, store.csrf_token(first))
    assert not store.csrf_ok(first, store.csrf_token(second))
    assert not store.csrf_ok(first, "")


def test_login_back_off_doubles_and_a_success_clears_it() -> None:
    now = [0.0]
    throttle = LoginThrottle(free_attempts=3, max_backoff_seconds=5, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("admin", "10.0.0.1")
    assert throttle.wait_seconds("admin", "10.0.0.1") == 0  # free attempts
    waits = []
    for _ in range(5):
        throttle.failed("admin", "10.0.0.1")
        waits.append(throttle.wait_seconds("admin", "10.0.0.1"))
    assert waits == [1, 2, 4, 5, 5]  # doubling, capped
    assert throttle.wait_seconds("admin", "10.0.0.2") == 0  # another address is not blocked
    now[0] += 5
    assert throttle.wait_seconds("admin", "10.0.0.1") == 0
    throttle.succeeded("admin", "10.0.0.1")
    throttle.failed("admin", "10.0.0.1")
    assert throttle.wait_seconds("admin", "10.0.0.1") == 0  # counting starts again


def test_one_address_guessing_under_many_user_names_is_held_back_too() -> None:
    throttle = LoginThrottle(free_attempts=2, max_backoff_seconds=60, clock=lambda: 0.0)
    for n in range(2 * LoginThrottle.ADDRESS_FACTOR):  # never more than 2 per name
        assert throttle.wait_seconds(f"user{n}", "10.0.0.1") == 0
        throttle.failed(f"user{n}", "10.0.0.1")
    throttle.failed("yet-another", "10.0.0.1")
    assert throttle.wait_seconds("admin", "10.0.0.1") > 0  # a name never tried before
    assert throttle.wait_seconds("admin", "10.0.0.2") == 0


def test_an_unknown_user_costs_the_same_scrypt_run_as_a_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = _creds(b"a" * 32, "right")
    tokens = TokenChecker(creds)
    calls: list[int] = []
    real = hashlib.scrypt

    def counted(*args: object, **kwargs: object) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    check_login(creds, tokens, "admin", "warm-up")  # the dummy hash is made once, lazily
    monkeypatch.setattr(hashlib, "scrypt", counted)
    assert check_login(creds, tokens, "admin", "wrong") is None
    known = len(calls)
    assert check_login(creds, tokens, "nobody", "wrong") is None
    assert len(calls) - known == known == 1
    assert check_login(creds, tokens, "nobody", "right") is None
    assert check_login(creds, tokens, "admin", "right") == "admin"


def test_stored_hash_checks_the_secret_only() -> None:
    stored = hash_secret("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_secret("correct horse", stored)
    assert not verify_secret("correct horse ", stored)
    assert not verify_secret("correct horse", "plain-text")
