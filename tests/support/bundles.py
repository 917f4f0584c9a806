"""Tiny MONAI bundles written by the tests: configs, metadata and weights in a folder.

The configs follow the Model Zoo layout (``configs/inference.json``, ``configs/metadata.json``,
``models/model.pt``) and the Model Zoo's own structure (LoadImaged ... Invertd, SaveImaged),
so the pipeline is exercised exactly as a downloaded bundle would exercise it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def write_bundle(
    root: Path,
    config: Mapping[str, Any],
    *,
    channel_def: Mapping[str, str],
    state_dict: Mapping[str, torch.Tensor] | None = None,
    output_format: str = "segmentation",
    version: str = "0.0.1",
) -> Path:
    """Write a bundle folder; ``state_dict`` goes to models/model.pt as a checkpoint."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    metadata = {
        "version": version,
        "name": root.name,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": output_format,
                    "num_channels": len(channel_def),
                    "channel_def": dict(channel_def),
                }
            },
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    if state_dict is not None:
        torch.save({"model": dict(state_dict)}, root / "models" / "model.pt")
    return root


def segmentation_config(
    network_def: Mapping[str, Any],
    *,
    pixdim: Sequence[float] | None = (3.0, 3.0, 4.0),
    intensity: tuple[float, float] = (-1000.0, 1000.0),
    inferer: Mapping[str, Any] | None = None,
    invert: bool = True,
) -> dict[str, Any]:
    """A Model Zoo style segmentation config: RAS, resampled, scaled, softmax, inverted."""
    pre: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
    ]
    if pixdim is not None:
        pre.append(
            {
                "_target_": "Spacingd",
                "keys": "@image_key",
                "pixdim": list(pixdim),
                "mode": "bilinear",
            }
        )
    pre += [
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "@image_key",
            "a_min": intensity[0],
            "a_max": intensity[1],
            "b_min": -1.0,
            "b_max": 1.0,
            "clip": True,
        },
        {"_target_": "EnsureTyped", "keys": "@image_key"},
    ]
    post: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    if invert:
        post.append(
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "@image_key",
                "nearest_interp": False,
                "to_tensor": True,
            }
        )
    post += [
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"},
    ]
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": dict(network_def),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "inferer": dict(inferer or {"_target_": "SimpleInferer"}),
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


CONV_1X1X1 = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}


def threshold_weights(
    threshold_hu: float, scale: float = 1000.0, gain: float = 50.0
) -> dict[str, torch.Tensor]:
    """Weights of CONV_1X1X1 whose argmax is ``HU > threshold_hu`` after scaling to [-1, 1]."""
    weight = torch.zeros(2, 1, 1, 1, 1)
    bias = torch.zeros(2)
    weight[1, 0, 0, 0, 0] = gain
    bias[1] = -gain * threshold_hu / scale
    return {"weight": weight, "bias": bias}
