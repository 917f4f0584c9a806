"""Tiny MONAI bundles written by the tests: configs, metadata and weights in a folder.

The configs follow the Model Zoo layout (``configs/inference.json``, ``configs/metadata.json``,
``models/model.pt``) and the Model Zoo's own structure (LoadImaged ... Invertd, SaveImaged),
so the pipeline is exercised exactly as a downloaded bundle would exercise it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


class TinyFpn(torch.nn.Module):
    """A small 3D feature pyramid for RetinaNet (two levels, strides 2 and 4).

    Small enough to train in a test; MONAI's RetinaNet takes any module with
    ``out_channels`` returning feature maps (the Model Zoo detector's ResNet-50 FPN is run in
    tests/unit/pipelines/test_bundle_lung_nodule.py with constructed weights).
    """

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.out_channels = out_channels
        c = out_channels
        self.level1 = torch.nn.Sequential(
            torch.nn.Conv3d(1, c, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(c, c, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.level2 = torch.nn.Sequential(
            torch.nn.Conv3d(c, c, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(c, c, 3, padding=1),
            torch.nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        first = self.level1(x)
        return {"0": first, "1": self.level2(first)}


def detection_config(*, intensity: tuple[float, float], pixdim: Sequence[float]) -> dict[str, Any]:
    """A Model Zoo style RetinaNet detection config (as lung_nodule_ct_detection's)."""
    return {
        "image_key": "image",
        "device": "$torch.device('cpu')",
        "feature_extractor": {"_target_": "tests.support.bundles.TinyFpn", "out_channels": 16},
        "network_def": {
            "_target_": "RetinaNet",
            "spatial_dims": 3,
            "num_classes": 1,
            "num_anchors": 3,
            "feature_extractor": "@feature_extractor",
            "size_divisible": [8, 8, 8],
        },
        "network": "$@network_def.to(@device)",
        "anchor_generator": {
            "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
            "feature_map_scales": [1, 2],
            "base_anchor_shapes": [[6, 6, 6], [8, 8, 8], [10, 10, 10]],
        },
        "detector": {
            "_target_": "RetinaNetDetector",
            "network": "@network",
            "anchor_generator": "@anchor_generator",
            "debug": False,
        },
        "detector_ops": [
            "$@detector.set_target_keys(box_key='box', label_key='label')",
            "$@detector.set_box_selector_parameters(score_thresh=0.05,"
            "topk_candidates_per_level=100,nms_thresh=0.22,detections_per_img=10)",
        ],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "@image_key"},
                {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
                {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "@image_key", "pixdim": list(pixdim)},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "@image_key",
                    "a_min": intensity[0],
                    "a_max": intensity[1],
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "@image_key"},
            ],
        },
    }


def train_detector(detector: Any, *, steps: int, shape: Sequence[int], seed: int = 0) -> None:
    """Train a RetinaNetDetector briefly on bright spheres in noise (image voxel space).

    Deterministic whatever ran before in the process: every random source is seeded
    (MONAI's samplers draw from the global generators) and training runs on one thread, so
    the order of floating-point sums does not depend on the thread pool others left behind.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_detector(detector, steps=steps, shape=shape, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train_detector(detector: Any, *, steps: int, shape: Sequence[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16
    )
    optimizer = torch.optim.Adam(detector.network.parameters(), 1e-3)
    detector.train()
    for _ in range(steps):
        images, targets = [], []
        for _ in range(2):
            image = rng.normal(0.0, 0.02, shape).astype(np.float32)
            centre = rng.uniform([6] * 3, np.array(shape) - 6)
            radius = rng.uniform(3.0, 5.0)
            image[np.linalg.norm(grid - centre, axis=-1) <= radius] = 1.0
            images.append(torch.from_numpy(image)[None])
            box = torch.tensor([[*(centre - radius), *(centre + radius)]], dtype=torch.float32)
            targets.append({"box": box, "label": torch.tensor([0])})
        losses = detector(images, targets)
        loss = losses[detector.cls_key] + losses[detector.box_reg_key]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    detector.eval()


SMALL_UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
}


def train_segmenter(
    network: torch.nn.Module, *, steps: int, shape: Sequence[int], seed: int = 0
) -> None:
    """Train a 2-class segmentation network briefly on bright spheres in noise.

    Images are in the bundle's pre-processed space (intensity window -> [-1, 1]), labels
    are the spheres; the network has to learn where spheres are, nothing is constructed.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), 1e-2)
    network.train()
    for _ in range(steps):
        images, labels = [], []
        for _ in range(4):
            image = rng.normal(-1.0, 0.05, shape).astype(np.float32)
            label = np.zeros(shape, dtype=np.float32)
            for _ in range(int(rng.integers(1, 4))):
                centre = rng.uniform([4] * 3, np.array(shape) - 4)
                inside = np.linalg.norm(grid - centre, axis=-1) <= rng.uniform(2.0, 6.0)
                image[inside] = rng.uniform(0.6, 1.0)
                label[inside] = 1.0
            images.append(image[None])
            labels.append(label[None])
        batch = torch.from_numpy(np.stack(images))
        target = torch.from_numpy(np.stack(labels))
        loss = loss_fn(network(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()


class MeanClassifier(torch.nn.Module):
    """Two class logits from the mean input intensity: a classifier with known behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.linear(x.mean(dim=(1, 2, 3, 4))[:, None])
        return result


class SlowNet(torch.nn.Module):
    """A network that never finishes in time: for time-limit tests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(600)
        return torch.zeros((x.shape[0], 2, *x.shape[2:]))
