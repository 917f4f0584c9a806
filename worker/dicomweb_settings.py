"""Settings of DICOMweb sources and destinations, and per-destination delivery rules.

Kept apart from ``worker.settings`` so that file stays about the service as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    from worker.settings import Settings

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomwebAuthSettings(_Section):
    """How to authenticate to a DICOMweb service; secrets can come from the environment
    (``PACS_ANNOTATOR_DESTINATIONS__<NAME>__AUTH__PASSWORD``)."""

    type: Literal["none", "basic", "bearer"] = "none"
    username: str = ""
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _complete(self) -> DicomwebAuthSettings:
        if self.type == "basic" and not (self.username and self.password.get_secret_value()):
            raise ValueError("auth type basic needs username and password")
        if self.type == "bearer" and not self.token.get_secret_value():
            raise ValueError("auth type bearer needs token")
        return self


def check_http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/") if value else value


def check_ca_bundle(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"CA bundle {value} is not a readable file")
    return value


class DeliveryRule(_Section):
    """Send a job's results to ``to`` when the job matches every condition given.

    ``source``: the DICOMweb source name or calling AE title the study came from;
    ``modality``: a modality of the study's series; ``pipelines``: any of these ran.
    """

    to: tuple[str, ...] = Field(min_length=1)
    source: str | None = None
    modality: str | None = None
    pipelines: tuple[str, ...] = ()


class PollSettings(_Section):
    """QIDO-RS polling of a DICOMweb source for new studies; each is queued once.

    ``modality`` matches ModalitiesInStudy; ``study_date_days`` keeps studies dated today or
    in the last N days (null: any date); ``filters`` adds other QIDO-RS keyword=value matches.
    """

    interval_seconds: float = Field(default=300.0, gt=0)
    modality: str | None = None
    study_date_days: int | None = Field(default=1, ge=0, le=36500)
    filters: dict[str, str] = Field(default_factory=dict)


class DicomwebSource(_Section):
    """A DICOMweb archive studies are pulled from (WADO-RS), optionally polled (QIDO-RS)."""

    url: str
    auth: DicomwebAuthSettings = DicomwebAuthSettings()
    verify_tls: bool = True
    ca_bundle: Path | None = None
    deliver_to: tuple[str, ...] = ()
    poll: PollSettings | None = None

    _url = field_validator("url")(check_http_url)
    _ca = field_validator("ca_bundle")(check_ca_bundle)


def check_dicomweb(settings: Settings, known_pipelines: Collection[str]) -> None:
    """Sources and delivery rules name known destinations; source names cannot be mistaken
    for a DICOM sender (a pulled job records its source name as its calling AE)."""
    ae_titles = {d.ae_title for d in settings.destinations.values() if d.ae_title}
    for name, source in settings.sources.items():
        if not _SOURCE_NAME.match(name):
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
