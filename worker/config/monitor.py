"""Settings of the admin web app."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from worker.config.base import MIB, Section


class MonitorSettings(Section):
    """The admin web app (dashboard, JSON API, /metrics).

    Login takes the admin password (``password_hash``) or an API token (``token_hash``), both
    stored as hashes made by ``pacs-annotator hash-password``. With neither set, the first
    start generates a password into ``data_dir/monitor/admin-password`` (mode 0600).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    admin_user: str = Field(default="admin", min_length=1, max_length=64)
    password_hash: str = ""
    token_hash: str = ""
    session_secret: str = ""
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    refresh_seconds: int = Field(default=10, ge=0, le=3600)
    worker_stale_seconds: float = Field(default=60.0, gt=0)
    # The key stays in MB (admins script it); the code compares bytes, as scp.* does.
    # /readyz always fails when the SCP refuses for disk (scp.min_free_disk_bytes); this
    # only raises that threshold, to warn before the SCP refuses. 0: the SCP's alone.
    min_free_disk_mb: int = Field(default=0, ge=0)
    # Login back-off, origins allowed to post, preview bounds.
    login_free_attempts: int = Field(default=5, ge=1)
    login_max_backoff_seconds: float = Field(default=900.0, gt=0)
    trusted_origins: list[str] = Field(default_factory=list)
    preview_max_pixels: int = Field(default=4096 * 4096, ge=1)
    preview_cache_entries: int = Field(default=64, ge=1)
    # HTTPS served by the monitor itself (PEM files), for remote workers and admins beyond
    # this machine; empty: plain HTTP (or TLS from a reverse proxy in front).
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> MonitorSettings:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("monitor.tls_certificate and monitor.tls_private_key go together")
        for path in (self.tls_certificate, self.tls_private_key):
            if path is not None and not path.is_file():
                raise ValueError(f"monitor TLS file {path} is not a readable file")
        return self

    # The data per kind (dashboard, /metrics, /readyz) walks the spool and results trees;
    # its result is reused this long (0: walk at every request). Free space is always fresh.
    data_usage_cache_seconds: float = Field(default=15.0, ge=0, le=3600)

    @field_validator("trusted_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin like https://monitor.example:443")
        return value

    @field_validator("password_hash", "token_hash")
    @classmethod
    def _known_hash(cls, value: str) -> str:
        if value and not value.startswith("scrypt$"):
            raise ValueError("must be a hash from 'pacs-annotator hash-password' (scrypt$...)")
        return value

    @property
    def min_free_disk_bytes(self) -> int:
        return self.min_free_disk_mb * MIB

    @property
    def url(self) -> str:
        """Where an admin on this machine opens the monitor."""
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "https" if self.tls_certificate is not None else "http"
        return f"{scheme}://{shown}:{self.port}/"
