"""Settings of nnU-Net v2 pipelines: a trained model folder, or a TotalSegmentator task.

Checked at start-up without torch or nnunetv2 (files and JSON only): the folders and the
weights of every fold exist, and nnunetv2 is installed. Missing weights stop the service
with the folder expected; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from pipelines.nnunet_files import (
    DEFAULT_CHECKPOINT,
    ModelFolder,
    NnunetModelError,
    TotalSegmentatorTask,
    check_model_folder,
    check_orientation,
    parse_folds,
    totalsegmentator_task,
)
from worker.config.pipelines import BundlePipelineSettings, LabelCodeSettings, ModelQueueSettings

NNUNET_EXTRA = "pip install 'pacs-annotator[nnunet]'"


class _NnunetCommon(ModelQueueSettings):
    """What every nnU-Net pipeline sets: how to run the model and code its labels."""

    modalities: tuple[str, ...] | None = Field(default=None, min_length=1)
    labels: dict[str, LabelCodeSettings] = Field(default_factory=dict)
    orientation: str = "auto"

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str) -> str:
        return value if value == "auto" else check_orientation(value)

    @model_validator(mode="after")
    def _installed(self) -> _NnunetCommon:
        if importlib.util.find_spec("nnunetv2") is None:
            raise ValueError(f"nnU-Net pipelines need nnunetv2: {NNUNET_EXTRA}")
        return self


class NnunetPipelineSettings(_NnunetCommon):
    """A trained nnU-Net v2 model folder (``kind: nnunet``, ``model_folder: PATH``)."""

    kind: Literal["nnunet"]
    model_folder: Path
    folds: tuple[int | str, ...] = Field(default=(0,), min_length=1)
    checkpoint: str = DEFAULT_CHECKPOINT
    mirroring: bool = True
    step_size: float = Field(default=0.5, gt=0.0, le=1.0)

    _folds = field_validator("folds")(lambda value: parse_folds(value))

    @field_validator("model_folder")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _usable_folder(self) -> NnunetPipelineSettings:
        try:
            check_model_folder(self.folder())
        except NnunetModelError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def folder(self) -> ModelFolder:
        return ModelFolder(path=self.model_folder, folds=self.folds, checkpoint=self.checkpoint)


class TotalSegmentatorPipelineSettings(_NnunetCommon):
    """A TotalSegmentator task from its downloaded weights (``kind: totalsegmentator``)."""

    kind: Literal["totalsegmentator"]
    task: str = "total"
    mode: Literal["default", "fast", "fastest"] = "default"
    weights_dir: Path
    mirroring: bool = False
    step_size: float | None = Field(default=None, gt=0.0, le=1.0)

    @field_validator("weights_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _weights_present(self) -> TotalSegmentatorPipelineSettings:
        try:
            self.resolve()
        except NnunetModelError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def resolve(self) -> TotalSegmentatorTask:
        """The task's model folders under ``weights_dir`` (``NnunetModelError`` if missing)."""
        return totalsegmentator_task(self.task, self.mode, self.weights_dir)


#: Tags of the ``pipelines:`` entry types (pydantic puts them in error locations).
PIPELINE_KINDS = ("bundle", "nnunet", "totalsegmentator")


def _pipeline_kind(value: Any) -> str:
    """``kind: nnunet`` or ``kind: totalsegmentator``; anything else is a MONAI bundle."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in PIPELINE_KINDS[1:] else "bundle"


#: One entry under ``pipelines:``: a MONAI bundle, an nnU-Net folder or a TotalSegmentator task.
ModelPipelineSettings = Annotated[
    Annotated[BundlePipelineSettings, Tag("bundle")]
    | Annotated[NnunetPipelineSettings, Tag("nnunet")]
    | Annotated[TotalSegmentatorPipelineSettings, Tag("totalsegmentator")],
    Discriminator(_pipeline_kind),
]
