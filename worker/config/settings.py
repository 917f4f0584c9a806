"""Settings: one typed object, built once from a YAML file plus environment overrides.

Environment variables override the file: ``PACS_ANNOTATOR_<FIELD>``, nested fields joined
by ``__`` (``PACS_ANNOTATOR_SCP__PORT=11113``). Unknown or invalid settings stop start-up
with a message naming the setting, never a silent default. The sections live beside this
file, one module per topic; this one holds the whole and the checks across sections.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.registry import builtin_pipelines
from pipelines.routing import RoutingRule
from worker.config.delivery import DeliverySettings, Destination
from worker.config.dicomweb import SOURCE_NAME, DicomwebSource
from worker.config.edge import CompletionSettings, ScpSettings
from worker.config.jobs import RecoverySettings, WorkerSettings
from worker.config.monitor import MonitorSettings
from worker.config.nnunet import PIPELINE_KINDS, ModelPipelineSettings
from worker.config.pipelines import RoutingRuleSettings, default_routing
from worker.config.retention import RetentionSettings

ENV_PREFIX = "PACS_ANNOTATOR_"


class SettingsError(Exception):
    """The configuration cannot be used; the message names each offending setting."""


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
    routing: tuple[RoutingRuleSettings, ...] = Field(default_factory=default_routing)
    worker: WorkerSettings = WorkerSettings()
    monitor: MonitorSettings = MonitorSettings()
    pipelines: dict[str, ModelPipelineSettings] = Field(default_factory=dict)
    recovery: RecoverySettings = RecoverySettings()
    retention: RetentionSettings = RetentionSettings()

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
        _check_retention(self)
        _check_dicomweb(self, known)
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


def _check_dicomweb(settings: Settings, known_pipelines: Collection[str]) -> None:
    """Sources and delivery rules name known destinations; source names cannot be mistaken
    for a DICOM sender (a pulled job records its source name as its calling AE)."""
    ae_titles = {d.ae_title for d in settings.destinations.values() if d.ae_title}
    for name, source in settings.sources.items():
        if not SOURCE_NAME.match(name):
            raise ValueError(f"sources.{name}: a source name is 1-16 of A-Z a-z 0-9 _ . -")
        if name in ae_titles:
            raise ValueError(f"sources.{name}: the name equals a destination's AE title")
        for target in source.deliver_to:
            if target not in settings.destinations:
                raise ValueError(f"sources.{name}.deliver_to: unknown destination {target!r}")
    for i, rule in enumerate(settings.delivery.rules):
        for target in rule.to:
            if target not in settings.destinations:
                raise ValueError(f"delivery.rules[{i}].to: unknown destination {target!r}")
        for pipeline in rule.pipelines:
            if pipeline not in known_pipelines:
                raise ValueError(f"delivery.rules[{i}].pipelines: unknown pipeline {pipeline!r}")


def _check_retention(settings: Settings) -> None:
    """Disk pressure must start freeing space before the SCP starts refusing."""
    pressure = settings.retention.pressure_free_bytes
    if pressure and pressure <= settings.scp.min_free_disk_bytes:
        raise ValueError(
            "retention.pressure_free_bytes must exceed scp.min_free_disk_bytes (or be 0), "
            "or the SCP refuses studies before the purge frees any space"
        )


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) > 2 and loc[0] == "pipelines" and loc[2] in PIPELINE_KINDS:
            del loc[2]  # the union's tag: admins know the entry by its name
        where = ".".join(str(p) for p in loc) or "(top level)"
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
