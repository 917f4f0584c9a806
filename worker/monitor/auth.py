"""Admin credentials: scrypt hashes, the login check, the first-login password.

Passwords and tokens are stored only as salted scrypt hashes (``scrypt$n$r$p$salt$hash``).
Sessions live in ``worker.monitor.sessions``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

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


def _forget_generated(monitor_dir: Path) -> None:
    """A hash is configured now: the generated password must not stay readable on disk."""
    for name in (PASSWORD_FILE, HASH_FILE):
        path = monitor_dir / name
        if path.exists():
            path.unlink()
            log.info("monitor: a password or token hash is configured; removed %s", path)


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
    if password_hash or token_hash:
        _forget_generated(monitor_dir)
    else:
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


@functools.cache
def _dummy_hash() -> str:
    """Checked when no password is set, so every login costs the same one scrypt run."""
    return hash_secret(secrets.token_urlsafe(16))


def check_login(creds: Credentials, tokens: TokenChecker, user: str, password: str) -> str | None:
    """The actor for a login form: the admin with their password, or ``token`` for an API
    token typed as the password. Runs one scrypt whatever the user, known or not."""
    password_ok = verify_secret(password, creds.password_hash or _dummy_hash())
    user_ok = hmac.compare_digest(user.encode(), creds.user.encode())
    if password_ok and user_ok and creds.password_hash:
        return user
    return tokens.check(password)
