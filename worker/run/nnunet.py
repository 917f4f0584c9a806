"""nnU-Net and TotalSegmentator settings -> ``NnunetSpec``: the worker builds, pipelines run."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pipelines.bundle_outputs import LabelCode
from pipelines.nnunet import NnunetSpec
from pipelines.nnunet_files import totalsegmentator_map
from worker.config import (
    LabelCodeSettings,
    NnunetPipelineSettings,
    TotalSegmentatorPipelineSettings,
)


def nnunet_spec(
    name: str,
    settings: NnunetPipelineSettings | TotalSegmentatorPipelineSettings,
    label_code: Callable[[LabelCodeSettings], LabelCode],
) -> NnunetSpec:
    """The spec of a model folder, or of a TotalSegmentator task's folders (resolved now)."""
    labels: Mapping[str, LabelCode] = {
        label: label_code(code) for label, code in settings.labels.items()
    }
    if isinstance(settings, NnunetPipelineSettings):
        return NnunetSpec(
            name=name,
            folders=(settings.folder(),),
            modalities=frozenset(settings.modalities or ("CT",)),
            labels=labels,
            use_mirroring=settings.mirroring,
            step_size=settings.step_size,
            orientation=settings.orientation,
        )
    task = settings.resolve()
    return NnunetSpec(
        name=name,
        folders=task.folders,
        modalities=frozenset(settings.modalities or (task.modality,)),
        labels=labels,
        use_mirroring=settings.mirroring,
        step_size=settings.step_size or task.step_size,
        # TotalSegmentator reorients every image to RAS before its models see it.
        orientation="RAS" if settings.orientation == "auto" else settings.orientation,
        version=f"TotalSegmentator {task.task} {task.mode} ({_source_version()})",
    )


def _source_version() -> str:
    """The TotalSegmentator release the shipped task map was made from."""
    source = str(totalsegmentator_map()["source"])
    return source.split(" (", 1)[0]
