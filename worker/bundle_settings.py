"""Settings of configured model pipelines (MONAI bundles), devices and queues.

Kept apart from ``settings.py`` so that file stays a list of sections; ``Settings``
includes these. A bundle directory is checked at start-up (it exists, has a config and
weights) without running any of its code: that happens in the worker, once per process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.bundle_files import check_bundle_dir
from pipelines.colors import parse_color
from pipelines.errors import BundleError

#: The queue every job goes to unless a pipeline names another one.
DEFAULT_QUEUE = "pacs-annotator"
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise ValueError(f"must be cpu, cuda or cuda:N, not {value!r}")
    return value


def check_queues(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_queue(q) for q in value)


def check_queue(value: str) -> str:
    if not _QUEUE.match(value):
        raise ValueError(
            f"a queue name is 1-64 letters, digits, '_', '.', ':' or '-', not {value!r}"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelCodeSettings(_Section):
    """The DICOM code of one output label (SEG segmented property type / SR finding)."""

    code: str = Field(min_length=1, max_length=16)
    scheme: str = "SCT"
    meaning: str = Field(min_length=1, max_length=64)
    category_code: str = "91723000"
    category_scheme: str = "SCT"
    category_meaning: str = "Anatomical Structure"
    color: str | None = None

    @field_validator("color")
    @classmethod
    def _color(cls, value: str | None) -> str | None:
        if value is not None:
            parse_color(value)  # ValueError names the form it expects
        return value


class BundlePipelineSettings(_Section):
    """One MONAI bundle run as a named pipeline (``pipelines: {NAME: {bundle: PATH}}``)."""

    bundle: Path
    config: str = "inference"
    kind: Literal["auto", "segmentation", "detection", "classification"] = "auto"
    modalities: tuple[str, ...] = Field(default=("CT",), min_length=1)
    labels: dict[str, LabelCodeSettings] = Field(default_factory=dict)
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)
    amp: bool = True
    queue: str = DEFAULT_QUEUE
    oom_fallback_queue: str | None = None
    time_limit_seconds: float | None = Field(default=None, gt=0)

    _queues = field_validator("queue", "oom_fallback_queue")(
        lambda value: None if value is None else check_queue(value)
    )

    @field_validator("bundle")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _usable_bundle(self) -> BundlePipelineSettings:
        try:
            check_bundle_dir(self.bundle, self.config)
        except BundleError as exc:
            raise ValueError(str(exc)) from exc
        return self
