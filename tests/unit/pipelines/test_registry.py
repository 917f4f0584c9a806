"""The built-in pipelines are registered under their own names."""

from __future__ import annotations

from pipelines.ct_basic import CtBasicPipeline
from pipelines.registry import builtin_pipelines


def test_builtin_pipelines_are_keyed_by_name() -> None:
    pipelines = builtin_pipelines()
    assert set(pipelines) == {"ct-basic"}
    assert isinstance(pipelines["ct-basic"], CtBasicPipeline)
    for name, pipeline in pipelines.items():
        assert pipeline.name == name == pipeline.algorithm.name
    assert builtin_pipelines()["ct-basic"] is not pipelines["ct-basic"]
