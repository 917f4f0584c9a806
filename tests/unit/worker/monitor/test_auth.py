"""Session cookies and stored secrets: what the monitor trusts and what it refuses."""

from __future__ import annotations

import time

import pytest
from itsdangerous import TimestampSigner

from worker.monitor.auth import Credentials, check_session, hash_secret, make_session, verify_secret


def _creds(secret: bytes) -> Credentials:
    return Credentials("admin", hash_secret("pw"), "", secret)


def test_session_cookie_is_refused_when_forged_foreign_or_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = _creds(b"a" * 32), _creds(b"b" * 32)
    cookie = make_session(ours, "admin")
    assert check_session(ours, cookie, max_age_seconds=3600) == "admin"
    assert check_session(theirs, cookie, max_age_seconds=3600) is None  # another secret
    assert check_session(ours, cookie.replace("admin", "root", 1), 3600) is None  # edited
    unsigned = cookie.rsplit(".", 1)[0]  # user.timestamp of the itsdangerous format
    assert check_session(ours, unsigned + ".AAAAAAAAAAAAAAAAAAAAAAAAAAA", 3600) is None  # made up
    assert check_session(ours, unsigned, 3600) is None  # no signature at all
    later = int(time.time()) + 5  # the signer's clock, moved on instead of waiting
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda _self: later)
    assert check_session(ours, cookie, max_age_seconds=60) == "admin"
    assert check_session(ours, cookie, max_age_seconds=1) is None  # expired


def test_stored_hash_checks_the_secret_only() -> None:
    stored = hash_secret("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_secret("correct horse", stored)
    assert not verify_secret("correct horse ", stored)
    assert not verify_secret("correct horse", "plain-text")
