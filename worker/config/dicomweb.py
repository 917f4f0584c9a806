"""Settings of DICOMweb archives: how to authenticate, and the sources studies are pulled from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from worker.config.base import Section, check_ca_bundle, check_http_url

SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")


class DicomwebAuthSettings(Section):
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


class PollSettings(Section):
    """QIDO-RS polling of a DICOMweb source for new studies; each is queued once.

    ``modality`` matches ModalitiesInStudy; ``study_date_days`` keeps studies dated today or
    in the last N days (null: any date); ``filters`` adds other QIDO-RS keyword=value matches.
    """

    interval_seconds: float = Field(default=300.0, gt=0)
    modality: str | None = None
    study_date_days: int | None = Field(default=1, ge=0, le=36500)
    filters: dict[str, str] = Field(default_factory=dict)


class DicomwebSource(Section):
    """A DICOMweb archive studies are pulled from (WADO-RS), optionally polled (QIDO-RS)."""

    url: str
    auth: DicomwebAuthSettings = DicomwebAuthSettings()
    verify_tls: bool = True
    ca_bundle: Path | None = None
    deliver_to: tuple[str, ...] = ()
    poll: PollSettings | None = None

    _url = field_validator("url")(check_http_url)
    _ca = field_validator("ca_bundle")(check_ca_bundle)
