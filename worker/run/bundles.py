"""Configured pipelines: the built-in ones plus every bundle under ``pipelines:``.

Built here, in the worker, from settings: ``pipelines/`` knows nothing of the settings
file, and the bundles' code (torch, MONAI, the bundle config) only runs in processes
that run models.
"""

from __future__ import annotations

import logging

from pydicom.sr.coding import Code

from pipelines.base import Pipeline
from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.bundle_outputs import LabelCode
from pipelines.colors import parse_color
from pipelines.errors import BundleError
from pipelines.nnunet import NnunetPipeline
from pipelines.registry import builtin_pipelines
from worker.config import BundlePipelineSettings, LabelCodeSettings, Settings
from worker.run.nnunet import nnunet_spec

log = logging.getLogger(__name__)


def label_code(settings: LabelCodeSettings) -> LabelCode:
    return LabelCode(
        category=Code(settings.category_code, settings.category_scheme, settings.category_meaning),
        property_type=Code(settings.code, settings.scheme, settings.meaning),
        color=parse_color(settings.color) if settings.color else None,
    )


def bundle_spec(name: str, settings: BundlePipelineSettings) -> BundleSpec:
    return BundleSpec(
        name=name,
        path=settings.bundle,
        config=settings.config,
        kind=settings.kind,
        modalities=frozenset(settings.modalities),
        labels={label: label_code(code) for label, code in settings.labels.items()},
        min_score=settings.min_score,
        amp=settings.amp,
        overrides=dict(settings.overrides),
        class_names=settings.class_names,
    )


def configured_pipelines(settings: Settings) -> dict[str, Pipeline]:
    """Fresh pipelines by name; models on ``worker.device``, not loaded yet."""
    pipelines = dict(builtin_pipelines())
    device = settings.worker.device
    for name, model in settings.pipelines.items():
        if isinstance(model, BundlePipelineSettings):
            pipelines[name] = BundlePipeline(bundle_spec(name, model), device=device)
        else:
            pipelines[name] = NnunetPipeline(nnunet_spec(name, model, label_code), device=device)
    return pipelines


def load_models(pipelines: dict[str, Pipeline]) -> None:
    """Load every model now (in the worker process, after fork), so jobs find them warm."""
    for pipeline in pipelines.values():
        if isinstance(pipeline, BundlePipeline | NnunetPipeline):
            try:
                pipeline.load()
            except BundleError as exc:
                # Jobs routed to it fail with this reason (it is tried again then); the
                # worker and the other pipelines stay up.
                log.error("cannot load pipeline %s: %s", pipeline.name, exc)
