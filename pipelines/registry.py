"""The pipelines that ship with pacs-annotator, by name."""

from __future__ import annotations

from pipelines.base import Pipeline
from pipelines.ct_basic import CtBasicPipeline
from pipelines.ct_lung_nodules import CtLungNodulesPipeline


def builtin_pipelines() -> dict[str, Pipeline]:
    """Fresh instances of the built-in pipelines, keyed by their ``name``.

    A function, not a module-level dict: models load when the worker asks, not on import.
    """
    pipelines: list[Pipeline] = [CtBasicPipeline(), CtLungNodulesPipeline()]
    return {pipeline.name: pipeline for pipeline in pipelines}
