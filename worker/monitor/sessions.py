"""Server-side admin sessions and the login back-off.

A session cookie carries a random session id signed with a key derived from the session
secret *and* the configured password and token hashes: changing any of them invalidates
every cookie ever issued. Each live session is also a file under ``data_dir/monitor/sessions``
(named by the SHA-256 of its id, so a directory listing does not hand out cookies), so that
logout ends the session for every monitor process on the machine, not only in the browser
that clicked it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, TimestampSigner

from worker.monitor.auth import Credentials

FINGERPRINT_FILE = ".fingerprint"


@dataclass(frozen=True)
class Session:
    """A live session: who, and the id its CSRF token is bound to."""

    user: str
    sid: str


class SessionStore:
    """Sessions that logout and a credential change can end, kept as files on disk."""

    def __init__(
        self,
        directory: Path,
        credentials: Credentials,
        max_age_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_age = max_age_seconds
        self._clock = clock
        fingerprint = hashlib.sha256(
            b"\0".join(
                (
                    credentials.session_secret,
                    credentials.password_hash.encode(),
                    credentials.token_hash.encode(),
                )
            )
        ).hexdigest()
        self._secret = credentials.session_secret
        self._signer = TimestampSigner(
            credentials.session_secret + fingerprint.encode(), salt="pacs-annotator-session"
        )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker = directory / FINGERPRINT_FILE
        if not marker.exists() or marker.read_text().strip() != fingerprint:
            # The password, token or secret changed: no session of the old ones survives.
            self.close_all()
            marker.write_text(fingerprint + "\n")

    def _path(self, sid: str) -> Path:
        return self.directory / hashlib.sha256(sid.encode()).hexdigest()

    def open(self, user: str) -> str:
        """A new session for ``user``; returns the cookie value."""
        self.prune()
        sid = secrets.token_urlsafe(32)
        fd = os.open(self._path(sid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"user": user, "created": self._clock()}, fh)
        return self._signer.sign(sid).decode()

    def _sid(self, cookie: str) -> str | None:
        try:
            return self._signer.unsign(cookie, max_age=self.max_age).decode()
        except BadSignature:  # tampered, foreign, expired, or signed under old credentials
            return None

    def find(self, cookie: str) -> Session | None:
        """The live session of a cookie, or None (forged, expired, logged out)."""
        sid = self._sid(cookie)
        if sid is None:
            return None
        try:
            record = json.loads(self._path(sid).read_text())
        except (OSError, ValueError):
            return None  # logged out, or revoked by a credential change
        if self._clock() - float(record["created"]) > self.max_age:
            self._path(sid).unlink(missing_ok=True)
            return None
        return Session(str(record["user"]), sid)

    def close(self, cookie: str) -> None:
        """Logout: the cookie stops working everywhere, even if someone kept a copy."""
        sid = self._sid(cookie)
        if sid is not None:
            self._path(sid).unlink(missing_ok=True)

    def close_all(self) -> None:
        for path in self.directory.iterdir():
            if path.name != FINGERPRINT_FILE:
                path.unlink(missing_ok=True)

    def prune(self) -> None:
        """Forget expired sessions, so the directory does not grow with every login."""
        oldest = self._clock() - self.max_age
        for path in self.directory.iterdir():
            if path.name != FINGERPRINT_FILE and path.stat().st_mtime < oldest:
                path.unlink(missing_ok=True)

    def csrf_token(self, session: Session) -> str:
        """The token forms of this session must send back: useless with any other session."""
        return hmac.new(self._secret, b"csrf\0" + session.sid.encode(), "sha256").hexdigest()

    def csrf_ok(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(session), token)

    def login_token(self, nonce: str) -> str:
        """The login form's CSRF token, bound to a random pre-login cookie (``nonce``)."""
        return hmac.new(self._secret, b"login\0" + nonce.encode(), "sha256").hexdigest()

    def login_token_ok(self, nonce: str, token: str) -> bool:
        return bool(nonce) and hmac.compare_digest(self.login_token(nonce), token)


@dataclass
class _Failures:
    count: int = 0
    blocked_until: float = 0.0


class LoginThrottle:
    """Back-off per (user, client address) after repeated wrong passwords.

    The first ``free_attempts`` failures cost nothing; each one after that blocks the pair for
    twice as long as the last (1 s, 2 s, 4 s ... up to ``max_backoff_seconds``). While blocked,
    a login is refused without looking at the password, so a guess that happens to be right
    does not get in. A success clears the pair. An address is also counted over all user
    names (with ``ADDRESS_FACTOR`` times the free attempts), since an API token typed as the
    password logs in whatever the user field says. Kept in memory: one monitor process.
    """

    ADDRESS_FACTOR = 4

    def __init__(
        self,
        free_attempts: int,
        max_backoff_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_attempts = free_attempts
        self.max_backoff = max_backoff_seconds
        self._clock = clock
        self._failures: dict[tuple[str | None, str], _Failures] = {}

    def wait_seconds(self, user: str, address: str) -> float:
        """How long this pair must still wait before its next try (0: may try now)."""
        now = self._clock()
        entries = (self._failures.get((user, address)), self._failures.get((None, address)))
        return max((max(0.0, e.blocked_until - now) for e in entries if e), default=0.0)

    def _count(self, key: tuple[str | None, str], free: int) -> None:
        entry = self._failures.setdefault(key, _Failures())
        entry.count += 1
        over = entry.count - free
        if over > 0:
            entry.blocked_until = self._clock() + min(2.0 ** (over - 1), self.max_backoff)

    def failed(self, user: str, address: str) -> None:
        if len(self._failures) > 10_000:  # bound memory under a spray of made-up users
            now = self._clock()
            self._failures = {k: v for k, v in self._failures.items() if v.blocked_until > now}
        self._count((user, address), self.free_attempts)
        self._count((None, address), self.free_attempts * self.ADDRESS_FACTOR)

    def succeeded(self, user: str, address: str) -> None:
        self._failures.pop((user, address), None)
        self._failures.pop((None, address), None)
