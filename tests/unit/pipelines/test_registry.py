"""The built-in pipelines are registered under their own names."""

from __future__ import annotations

from pipelines.ct_basic import CtBasicPipeline
from pipelines.ct_lung_nodules import CtLungNodulesPipeline
from pipelines.registry import builtin_pipelines


def test_builtin_pipelines_are_keyed_by_name() -> None:
    pipelines = builtin_pipelines()
    assert set(pipelines) == {"ct-basic", "ct-lung-nodules"}
    assert isinstance(pipelines["ct-basic"], CtBasicPipeline)
    assert isinstance(pipelines["ct-lung-nodules"], CtLungNodulesPipeline)
    assert pipelines["ct-lung-nodules"].modalities == frozenset({"CT"})
    for name, pipeline in pipelines.items():
        assert pipeline.name == name == pipeline.algorithm.name
    assert builtin_pipelines()["ct-basic"] is not pipelines["ct-basic"]
