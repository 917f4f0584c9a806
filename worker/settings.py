"""Settings: one typed object, built once from a YAML file plus environment overrides.

Environment variables override the file: ``PACS_ANNOTATOR_<FIELD>``, nested fields joined
by ``__`` (``PACS_ANNOTATOR_SCP__PORT=11113``). Unknown or invalid settings stop start-up
with a message naming the setting, never a silent default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES, RoutingRule
from scu_scp.security import parse_network
from worker.bundle_settings import BundlePipelineSettings, check_device, check_queues
from worker.dicomweb_settings import (
    DeliveryRule,
    DicomwebAuthSettings,
    DicomwebSource,
    check_ca_bundle,
    check_dicomweb,
    check_http_url,
)

ENV_PREFIX = "PACS_ANNOTATOR_"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no "\"


class SettingsError(Exception):
    """The configuration cannot be used; the message names each offending setting."""


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable ASCII characters, not only spaces, no '\\'")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCallerSettings(_Section):
    """A calling AE title the SCP accepts, optionally only from an IP address or network."""

    ae_title: str
    host: str | None = None

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("host")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            parse_network(value)
        return value


class ScpTlsSettings(_Section):
    """DICOM TLS for the SCP (PEM files); loaded when the SCP starts."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ScpTlsSettings:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


GIB = 1024**3


class ScpSettings(_Section):
    """Where the annotator listens for the PACS, whom it accepts, and its limits."""

    ae_title: str = "PACS_ANNOTATOR"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_callers: tuple[AllowedCallerSettings, ...] = ()
    tls: ScpTlsSettings | None = None
    max_associations: int = Field(default=10, ge=1, le=1000)
    max_instance_bytes: int = Field(default=2 * GIB, ge=0)
    max_study_bytes: int = Field(default=20 * GIB, ge=0)
    min_free_disk_bytes: int = Field(default=1 * GIB, ge=0)

    _ae = field_validator("ae_title")(_check_ae_title)


class CompletionSettings(_Section):
    """When a study counts as complete: no new instance for ``quiet_seconds``."""

    quiet_seconds: float = Field(default=30.0, gt=0, le=86400)


class DestinationTlsSettings(_Section):
    """DICOM TLS to a destination; no ca_certificates trusts the system CA store."""

    ca_certificates: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> DestinationTlsSettings:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class Destination(_Section):
    """A node that receives results: a DICOM C-STORE SCP (``type: dicom``, the default)
    or a DICOMweb archive (``type: dicomweb``, STOW-RS to ``url``)."""

    type: Literal["dicom", "dicomweb"] = "dicom"
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = None
    auth: DicomwebAuthSettings = DicomwebAuthSettings()
    verify_tls: bool = True
    ca_bundle: Path | None = None
    default: bool = False
    tls: DestinationTlsSettings | None = None

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)

    _url = field_validator("url")(check_http_url)
    _ca = field_validator("ca_bundle")(check_ca_bundle)

    @model_validator(mode="after")
    def _fields_for_type(self) -> Destination:
        if self.type == "dicom":
            missing = [n for n in ("ae_title", "host", "port") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"a dicom destination needs {', '.join(missing)}")
        elif self.url is None:
            raise ValueError("a dicomweb destination needs url")
        return self


class DeliverySettings(_Section):
    """How results reach the destinations.

    ``to`` empty means: the destination whose AE title equals the calling AE of the study,
    else the destination marked ``default``. A list of names sends to each of them.
    ``rules`` (first checked; every matching rule adds its destinations) route by source,
    modality or pipeline, so one job can go to a DICOM PACS and a DICOMweb archive.
    """

    to: tuple[str, ...] = ()
    max_retries: int = Field(default=5, ge=0, le=100)
    retry_delay_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)
    rules: tuple[DeliveryRule, ...] = ()


class RoutingRuleSettings(_Section):
    """Which pipelines run on which series; patterns are case-insensitive globs."""

    pipelines: tuple[str, ...] = Field(min_length=1)
    modality: str | None = None
    series_description: str | None = None
    body_part: str | None = None

    def to_rule(self) -> RoutingRule:
        return RoutingRule(
            pipelines=self.pipelines,
            modality=self.modality,
            series_description=self.series_description,
            body_part=self.body_part,
        )


def _default_routing() -> tuple[RoutingRuleSettings, ...]:
    return tuple(
        RoutingRuleSettings(
            pipelines=r.pipelines,
            modality=r.modality,
            series_description=r.series_description,
            body_part=r.body_part,
        )
        for r in DEFAULT_RULES
    )


class WorkerSettings(_Section):
    """The Celery worker processes."""

    concurrency: int = Field(default=1, ge=1, le=64)
    job_time_limit_seconds: float = Field(default=3600.0, gt=0)
    device: str = "cpu"  # cpu, cuda or cuda:N: where this worker's models run
    queues: tuple[str, ...] = ()  # queues this worker takes jobs from; empty: all configured
    # Redis hands an unacknowledged job (its worker died) to another worker after this.
    # Empty: twice the job time limit plus 10 minutes. See README "Reliability".
    visibility_timeout_seconds: float | None = Field(default=None, gt=0)
    # A running job whose worker stopped refreshing its lease for this long may be taken over.
    lease_seconds: float = Field(default=60.0, gt=0, le=86400)

    _device = field_validator("device")(check_device)
    _queues = field_validator("queues")(check_queues)

    @model_validator(mode="after")
    def _lease_below_visibility(self) -> WorkerSettings:
        timeout = self.visibility_timeout_seconds
        if timeout is not None and timeout <= self.lease_seconds:
            raise ValueError(
                "worker.visibility_timeout_seconds must exceed worker.lease_seconds, "
                "or a redelivered job would find its dead worker's lease still valid"
            )
        return self

    @property
    def effective_visibility_timeout(self) -> float:
        if self.visibility_timeout_seconds is not None:
            return self.visibility_timeout_seconds
        return self.job_time_limit_seconds * 2 + 600


class RecoverySettings(_Section):
    """How the dispatcher re-queues jobs the broker lost (Redis restarted without its data)."""

    interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    # A queued job with no message in the broker for this long is queued again.
    requeue_after_seconds: float = Field(default=120.0, gt=0)


class MonitorSettings(_Section):
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
    min_free_disk_mb: int = Field(default=1024, ge=0)

    @field_validator("password_hash", "token_hash")
    @classmethod
    def _known_hash(cls, value: str) -> str:
        if value and not value.startswith("scrypt$"):
            raise ValueError("must be a hash from 'pacs-annotator hash-password' (scrypt$...)")
        return value


class Settings(BaseSettings):
    """Everything the service needs, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("var")
    broker_url: str = ""
    database_url: str = ""
    log_level: str = "INFO"
    scp: ScpSettings = ScpSettings()
    completion: CompletionSettings = CompletionSettings()
    destinations: dict[str, Destination] = Field(default_factory=dict)
    sources: dict[str, DicomwebSource] = Field(default_factory=dict)
    delivery: DeliverySettings = DeliverySettings()
    routing: tuple[RoutingRuleSettings, ...] = Field(default_factory=_default_routing)
    worker: WorkerSettings = WorkerSettings()
    monitor: MonitorSettings = MonitorSettings()
    pipelines: dict[str, BundlePipelineSettings] = Field(default_factory=dict)
    recovery: RecoverySettings = RecoverySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "redis+socket://")):
            raise ValueError("must be a Redis URL (redis://host:port/db) or empty for embedded")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        defaults = [name for name, d in self.destinations.items() if d.default]
        if len(defaults) > 1:
            raise ValueError(f"destinations: only one may be default, got {', '.join(defaults)}")
        for name in self.delivery.to:
            if name not in self.destinations:
                raise ValueError(f"delivery.to: unknown destination {name!r}")
        builtin = builtin_pipelines().keys()
        for name in self.pipelines:
            if name in builtin:
                raise ValueError(f"pipelines.{name}: the name of a built-in pipeline")
        known = builtin | self.pipelines.keys()
        check_dicomweb(self, known)
        for i, rule in enumerate(self.routing):
            for name in rule.pipelines:
                if name not in known:
                    raise ValueError(
                        f"routing[{i}].pipelines: unknown pipeline {name!r} "
                        f"(known: {', '.join(sorted(known))})"
                    )
        return self

    # Derived locations: one place decides the layout under data_dir.
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def monitor_dir(self) -> Path:
        return self.data_dir / "monitor"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite3').resolve()}"

    @property
    def routing_rules(self) -> tuple[RoutingRule, ...]:
        return tuple(r.to_rule() for r in self.routing)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML) if given, apply environment overrides, validate everything."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise SettingsError(f"configuration file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"configuration file {path} must hold a mapping of settings")
        data = loaded or {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        source = f" in {path}" if path else ""
        raise SettingsError(f"invalid settings{source}:\n{_format_errors(exc)}") from exc
