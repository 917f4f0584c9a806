"""What every settings section shares: the base class, the common validators and units."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MIB = 1024**2
GIB = 1024**3

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no "\"


class Section(BaseModel):
    """A settings section: unknown keys are refused, values never change after start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable ASCII characters, not only spaces, no '\\'")
    return value.strip()


def check_http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/") if value else value


def check_ca_bundle(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"CA bundle {value} is not a readable file")
    return value
