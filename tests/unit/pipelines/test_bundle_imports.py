"""Two bundles that both ship a ``scripts`` package each run their own, in one process.

Each bundle's config names ``scripts.nets.Threshold`` (MONAI bundles' usual layout); the two
packages set different thresholds. Loaded and run alternately, each bundle's SEG follows its
own threshold, and neither the bundle roots nor their modules stay in ``sys.path`` or
``sys.modules`` (a module of the same name from elsewhere is put back).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.bundle_imports import top_level_names
from pipelines.volume import load_series
from tests.support.bundles import segmentation_config, write_bundle
from tests.support.phantom import BONE_HU, TISSUE_HU, make_ct_phantom

NETS = '''
import torch

from . import THRESHOLD_HU


class Threshold(torch.nn.Module):
    """Background/foreground logits: HU above this package's threshold (input scaled to +-1)."""

    def forward(self, x):
        fg = (x - THRESHOLD_HU / 1000.0) * 50.0
        return torch.cat([torch.zeros_like(fg), fg], dim=1)
'''


def scripted_bundle(root: Path, threshold_hu: float) -> Path:
    config = segmentation_config({"_target_": "scripts.nets.Threshold"}, pixdim=None)
    bundle = write_bundle(root, config, channel_def={"0": "background", "1": "dense"})
    torch.save({}, bundle / "models" / "model.pt")  # the network has no parameters
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text(f"THRESHOLD_HU = {threshold_hu}\n")
    (bundle / "scripts" / "nets.py").write_text(NETS)
    return bundle


@pytest.fixture
def foreign_scripts() -> Iterator[types.ModuleType]:
    """An unrelated module named ``scripts`` already imported in the process."""
    module = types.ModuleType("scripts")
    saved = sys.modules.get("scripts")
    sys.modules["scripts"] = module
    yield module
    if saved is None:
        sys.modules.pop("scripts", None)
    else:
        sys.modules["scripts"] = saved


def test_each_bundle_imports_its_own_scripts(
    tmp_path: Path, foreign_scripts: types.ModuleType
) -> None:
    # Bone (700 HU) is above both thresholds, soft tissue (40 HU) only above the lower one.
    low = scripted_bundle(tmp_path / "low", threshold_hu=(TISSUE_HU + -500.0) / 2)
    high = scripted_bundle(tmp_path / "high", threshold_hu=(TISSUE_HU + BONE_HU) / 2)
    assert top_level_names(low) == {"scripts"}
    path_before = list(sys.path)
    pipelines = [
        BundlePipeline(BundleSpec(name=name, path=root))
        for name, root in (("low", low), ("high", high))
    ]
    volume = load_series(make_ct_phantom(slices=8, size=48, pixel_spacing=6.0).datasets)
    tissue = (volume.voxels > TISSUE_HU - 60) & (volume.voxels < TISSUE_HU + 60)
    for _ in range(2):  # alternate: each run finds its own modules again
        for pipeline in pipelines:
            [segment] = pipeline.run(volume).segments
            assert sys.modules["scripts"] is foreign_scripts
            assert sys.path == path_before
            share = segment.mask[tissue].mean()
            if pipeline.name == "low":
                assert share > 0.95, f"soft tissue is above the low threshold ({share:.2f})"
            else:
                assert share < 0.05, f"soft tissue is below the high threshold ({share:.2f})"
    classes = [type(p._loaded.network) if p._loaded else None for p in pipelines]
    assert classes[0] is not classes[1]
    for cls, root in zip(classes, (low, high), strict=True):
        assert cls is not None and cls.__module__ == "scripts.nets"
        assert Path(cls.forward.__code__.co_filename).is_relative_to(root)
    assert all(p.load_count == 1 for p in pipelines)
