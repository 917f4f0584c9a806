"""Admin credentials: scrypt hashes, signed session cookies, the first-login password.

Passwords and tokens are stored only as salted scrypt hashes (``scrypt$n$r$p$salt$hash``).
A session cookie is the user signed with a timestamp (itsdangerous): no server-side state,
so the monitor can restart (or run twice) without logging everyone out, as long as the
secret is the same.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, TimestampSigner

log = logging.getLogger(__name__)

_N, _R, _P = 2**14, 8, 1
PASSWORD_FILE = "admin-password"
HASH_FILE = "admin-password.hash"
SECRET_FILE = "session-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of ``secret`` for the settings file."""
    if not secret:
        raise ValueError("the password or token must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (0600) from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


@dataclass(frozen=True)
class Credentials:
    """What a login is checked against, resolved once at start-up."""

    user: str
    password_hash: str
    token_hash: str
    session_secret: bytes
    generated_password_file: Path | None = None


def resolve_credentials(
    monitor_dir: Path, *, user: str, password_hash: str, token_hash: str, session_secret: str
) -> tuple[Credentials, str | None]:
    """Credentials from the settings, or a generated first-login password.

    Returns the credentials and, only when a password was generated just now, the password
    itself (for the caller to print once). Never a hard-coded default.
    """
    generated: str | None = None
    password_file: Path | None = None
    if not password_hash and not token_hash:
        hash_path = monitor_dir / HASH_FILE
        password_file = monitor_dir / PASSWORD_FILE
        if not hash_path.exists():
            generated = secrets.token_urlsafe(18)
            password_file.unlink(missing_ok=True)
            _write_private(password_file, generated + "\n")
            _write_private(hash_path, hash_secret(generated) + "\n")
        password_hash = hash_path.read_text().strip()
    if session_secret:
        secret = session_secret.encode()
    else:
        secret_path = monitor_dir / SECRET_FILE
        if not secret_path.exists():
            # Another process may make it first; either way everyone reads the same file.
            with contextlib.suppress(FileExistsError):
                _write_private(secret_path, secrets.token_hex(32) + "\n")
        secret = secret_path.read_text().strip().encode()
    creds = Credentials(user, password_hash, token_hash, secret, password_file)
    return creds, generated


def _signer(creds: Credentials) -> TimestampSigner:
    return TimestampSigner(creds.session_secret, salt="pacs-annotator-session")


def make_session(creds: Credentials, user: str) -> str:
    """A session cookie value: the user, signed with a timestamp."""
    return _signer(creds).sign(user).decode()


def check_session(creds: Credentials, cookie: str, max_age_seconds: int) -> str | None:
    """The user of a cookie signed with our secret less than ``max_age_seconds`` ago."""
    try:
        return _signer(creds).unsign(cookie, max_age=max_age_seconds).decode()
    except BadSignature:  # tampered, foreign or expired (SignatureExpired is a BadSignature)
        return None


class TokenChecker:
    """Checks bearer tokens; remembers digests of good ones so scrypt runs once per token."""

    def __init__(self, creds: Credentials) -> None:
        self._creds = creds
        self._good: set[str] = set()

    def check(self, token: str) -> str | None:
        """The actor name for a valid token (``token``), else None."""
        if not self._creds.token_hash or not token:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        if key in self._good:
            return "token"
        if verify_secret(token, self._creds.token_hash):
            self._good.add(key)
            return "token"
        return None
