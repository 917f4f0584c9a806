"""Settings: one typed object, built once from a YAML file plus environment overrides.

Environment variables override the file: ``PACS_ANNOTATOR_<FIELD>``, nested fields joined
by ``__`` (``PACS_ANNOTATOR_SCP__PORT=11113``). Unknown or invalid settings stop start-up
with a message naming the setting, never a silent default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.registry import builtin_pipelines
from pipelines.routing import DEFAULT_RULES, RoutingRule
from scu_scp.security import parse_network

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
    """A DICOM node that receives results (C-STORE SCP)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    default: bool = False
    tls: DestinationTlsSettings | None = None

    _ae = field_validator("ae_title")(_check_ae_title)


class DeliverySettings(_Section):
    """How results reach the destinations.

    ``to`` empty means: the destination whose AE title equals the calling AE of the study,
    else the destination marked ``default``. A list of names sends to each of them.
    """

    to: tuple[str, ...] = ()
    max_retries: int = Field(default=5, ge=0, le=100)
    retry_delay_seconds: float = Field(default=30.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)


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
    delivery: DeliverySettings = DeliverySettings()
    routing: tuple[RoutingRuleSettings, ...] = Field(default_factory=_default_routing)
    worker: WorkerSettings = WorkerSettings()

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
        known = builtin_pipelines().keys()
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
