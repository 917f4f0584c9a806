"""Settings of the pipelines: routing rules, and model pipelines (MONAI bundles).

A bundle directory is checked at start-up (it exists, has a config and weights) without
running any of its code: that happens in the worker, once per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydicom.sr.codedict import codes

from pipelines.bundle_files import check_bundle_dir
from pipelines.colors import parse_color
from pipelines.errors import BundleError
from pipelines.routing import DEFAULT_RULES, RoutingRule
from worker.config.base import Section
from worker.config.jobs import DEFAULT_QUEUE, check_queue


class RoutingRuleSettings(Section):
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


def default_routing() -> tuple[RoutingRuleSettings, ...]:
    return tuple(
        RoutingRuleSettings(
            pipelines=r.pipelines,
            modality=r.modality,
            series_description=r.series_description,
            body_part=r.body_part,
        )
        for r in DEFAULT_RULES
    )


_ANATOMY = codes.SCT.AnatomicalStructure


class LabelCodeSettings(Section):
    """The DICOM code of one output label (SEG segmented property type / SR finding)."""

    code: str = Field(min_length=1, max_length=16)
    scheme: str = "SCT"
    meaning: str = Field(min_length=1, max_length=64)
    category_code: str = _ANATOMY.value
    category_scheme: str = _ANATOMY.scheme_designator
    category_meaning: str = _ANATOMY.meaning
    color: str | None = None

    @field_validator("color")
    @classmethod
    def _color(cls, value: str | None) -> str | None:
        if value is not None:
            parse_color(value)  # ValueError names the form it expects
        return value


class ModelQueueSettings(Section):
    """Where a model pipeline's jobs run and for how long (bundles and nnU-Net alike)."""

    queue: str = DEFAULT_QUEUE
    oom_fallback_queue: str | None = None
    time_limit_seconds: float | None = Field(default=None, gt=0)

    _queues = field_validator("queue", "oom_fallback_queue")(
        lambda value: None if value is None else check_queue(value)
    )


class BundlePipelineSettings(ModelQueueSettings):
    """One MONAI bundle run as a named pipeline (``pipelines: {NAME: {bundle: PATH}}``)."""

    bundle: Path
    config: str = "inference"
    kind: Literal["auto", "segmentation", "detection", "classification"] = "auto"
    modalities: tuple[str, ...] = Field(default=("CT",), min_length=1)
    labels: dict[str, LabelCodeSettings] = Field(default_factory=dict)
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)
    amp: bool = True
    #: Config values set before the bundle is parsed, as `monai.bundle run --ID VALUE` does.
    overrides: dict[str, Any] = Field(default_factory=dict)
    #: Output class names by index (a detector's classes); empty: the metadata's channel_def.
    class_names: tuple[str, ...] = ()

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
