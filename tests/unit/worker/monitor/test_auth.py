"""Session cookies and stored secrets: what the monitor trusts and what it refuses."""

from __future__ import annotations

import time

from worker.monitor.auth import Credentials, check_session, hash_secret, make_session, verify_secret


def _creds(secret: bytes) -> Credentials:
    return Credentials("admin", hash_secret("pw"), "", secret)


def test_session_cookie_is_refused_when_forged_foreign_or_expired() -> None:
    ours, theirs = _creds(b"a" * 32), _creds(b"b" * 32)
    cookie = make_session(ours, "admin")
    assert check_session(ours, cookie, max_age_seconds=3600) == "admin"
    assert check_session(theirs, cookie, max_age_seconds=3600) is None  # another secret
    assert check_session(ours, cookie.replace("admin", "root", 1), 3600) is None  # edited
    assert check_session(ours, "admin|99999999999|00", 3600) is None  # made up
    time.sleep(2.1)  # itsdangerous counts whole seconds
    assert check_session(ours, cookie, max_age_seconds=1) is None  # expired


def test_stored_hash_checks_the_secret_only() -> None:
    stored = hash_secret("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_secret("correct horse", stored)
    assert not verify_secret("correct horse ", stored)
    assert not verify_secret("correct horse", "plain-text")
