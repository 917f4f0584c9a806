"""nnU-Net v2 model folders built by the tests: nnunetv2's own planner, constructed weights.

A tiny synthetic dataset is planned with nnunetv2's fingerprint extractor and
``ExperimentPlanner`` (its Python API), the 3d_fullres network is built from those plans
with nnunetv2's own trainer code, and its weights are set so that the network computes
an intensity threshold: the first convolution makes two channels, the intensity above
and below the threshold (in nnU-Net's CT-normalised units), every later one passes them
through its centre tap (the plans' instance norm is switched to batch norm, an identity
at inference), the decoder takes them from the full-resolution skip connection, and the
segmentation head puts their difference into the logit of label 1. So ``argmax`` is
label 1 exactly where the input exceeds the threshold: the expected mask is known on
any grid.

nnunetv2 reads ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` when it is
imported, so the building runs in a child process with those set (``build_models``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

THRESHOLD_HU = 300.0
DATASET_ID = 900
LEAF = "nnUNetTrainer__nnUNetPlans__3d_fullres"
#: The TotalSegmentator layout built: task ``total``, mode ``fastest`` (one dataset).
TOTALSEG_DATASET = 298
TOTALSEG_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
TOTALSEG_FOLDER = "Dataset298_TotalSegmentator_total_6mm_1559subj"
#: Name of label 1 in TotalSegmentator's total task: what the threshold comes out as.
TOTALSEG_LABEL_1 = "spleen"
_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class NnunetModels:
    """Folders the child process wrote."""

    model_folder: Path  # a plain nnUNetv2_train-style folder, labels background/dense
    totalseg_weights: Path  # a TotalSegmentator weights_dir with task total, mode fastest


def build_models(root: Path) -> NnunetModels:
    """Plan, build and write both model folders under ``root`` (about 30 s on one core)."""
    env = {
        **os.environ,
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_n_proc_DA": "1",
    }
    subprocess.run(
        [sys.executable, "-m", "tests.support.nnunet", str(root)],
        cwd=_REPO,
        env=env,
        check=True,
        timeout=600,
    )
    return models_under(root)


@pytest.fixture(scope="session")
def nnunet_models(tmp_path_factory: pytest.TempPathFactory) -> NnunetModels:
    """Both model folders, built once per test session (import this fixture to use it)."""
    pytest.importorskip("nnunetv2", reason="nnU-Net pipelines need the nnunet extra")
    return build_models(tmp_path_factory.mktemp("nnunet"))


def models_under(root: Path) -> NnunetModels:
    dataset = f"Dataset{DATASET_ID}_Threshold"
    return NnunetModels(
        model_folder=root / "results" / dataset / LEAF,
        totalseg_weights=root / "totalseg",
    )


def threshold_phantom(orientation: str, *, seed: int = 11, description: str = "dense") -> list[Any]:
    """A 32x96x96 CT at 2.5x2.5x4 mm, shuffled, with dense spheres above ``THRESHOLD_HU``."""
    from tests.support.phantom import Nodule, make_ct_phantom

    datasets = make_ct_phantom(
        slices=32,
        size=96,
        pixel_spacing=2.5,
        slice_spacing=4.0,
        orientation=orientation,  # type: ignore[arg-type]
        shuffle=True,
        seed=seed,
        nodules=[Nodule((-65.0, 5.0, 30.0), 40.0), Nodule((60.0, -20.0, -30.0), 30.0)],
        nodule_hu=700.0,
    ).datasets
    for ds in datasets:
        ds.SeriesDescription = description
    return datasets


def placeholder_model_folder(path: Path, folds: tuple[int, ...] = (0,)) -> Path:
    """The files a model folder must have, with placeholder weights (start-up checks only)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    (path / "plans.json").write_text("{}")
    for fold in folds:
        (path / f"fold_{fold}").mkdir(exist_ok=True)
        (path / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"placeholder")
    return path


def placeholder_totalsegmentator(weights_dir: Path, task: str, mode: str) -> list[Path]:
    """A TotalSegmentator weights_dir with placeholder folders for ``task`` in ``mode``."""
    from pipelines.nnunet_files import totalsegmentator_map

    folders = []
    for part in totalsegmentator_map()["tasks"][task]["modes"][mode]["datasets"]:
        leaf = f"{part['trainer']}__{part['plans']}__{part['configuration']}"
        dataset = weights_dir / f"Dataset{part['id']:03d}_TotalSegmentator_part"
        folders.append(placeholder_model_folder(dataset / leaf, tuple(part["folds"])))
    return folders


def _write_raw_dataset(raw: Path) -> None:
    """Two 5 mm cases: dense blocks labelled 1 in noisy soft tissue, as .nii.gz for the planner."""
    import SimpleITK

    folder = raw / f"Dataset{DATASET_ID}_Threshold"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    for case in range(2):
        image = rng.uniform(-200.0, 100.0, size=(24, 32, 32)).astype(np.float32)
        label = np.zeros(image.shape, dtype=np.uint8)
        label[6:18, 8 + case : 24, 10:26] = 1
        # foreground intensities span the threshold: CT normalisation clips to their range
        image[label == 1] = rng.uniform(-200.0, 1200.0, size=int(label.sum()))
        for array, path in (
            (image, folder / "imagesTr" / f"case{case}_0000.nii.gz"),
            (label, folder / "labelsTr" / f"case{case}.nii.gz"),
        ):
            written = SimpleITK.GetImageFromArray(array)
            written.SetSpacing((5.0, 5.0, 5.0))
            SimpleITK.WriteImage(written, str(path))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "dense": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
        "release": "test-1",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))


def _plan(root: Path) -> dict[str, Any]:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
    )

    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([DATASET_ID])
    plans_path = root / "preprocessed" / f"Dataset{DATASET_ID}_Threshold" / "nnUNetPlans.json"
    plans: dict[str, Any] = json.loads(plans_path.read_text())
    # Instance norm normalises each patch, so no weights make it a fixed threshold; batch
    # norm at inference is a fixed affine map (identity here), as in nnUNetTrainerBN.
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["norm_op"] = "torch.nn.BatchNorm3d"
    # Fewer features per stage than planned (32..256): the same U-Net, fast on a CPU.
    arch["features_per_stage"] = [4 * 2**stage for stage in range(arch["n_stages"])]
    return plans


def _threshold_network(
    plans: dict[str, Any], dataset_json: dict[str, Any], *, trainer_name: str, threshold_hu: float
) -> Any:
    """nnunetv2's 3d_fullres network from ``plans`` with the threshold weights set."""
    import torch
    from nnunetv2.utilities.find_objects import (
        recursive_find_trainer_class_by_name,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    outputs = manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer = recursive_find_trainer_class_by_name(trainer_name)
    network = trainer.build_network_architecture(
        manager, configuration, 1, outputs, enable_deep_supervision=False
    )
    intensity = plans["foreground_intensity_properties_per_channel"]["0"]
    low, high = intensity["percentile_00_5"], intensity["percentile_99_5"]
    assert low < threshold_hu < high, (low, high)
    threshold = (threshold_hu - intensity["mean"]) / max(intensity["std"], 1e-8)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        for norm in network.modules():
            if isinstance(norm, torch.nn.BatchNorm3d):
                norm.weight.fill_(1.0)  # running mean 0, variance 1: identity
        encoder = network.encoder.stages[0]
        decoder = network.decoder.stages[-1]
        first = True
        for block in [*_convs(encoder), *_convs(decoder)]:
            centre = tuple(k // 2 for k in block.kernel_size)
            source = 0
            if block is _convs(decoder)[0]:
                # input is cat(upsampled deeper features, skip of stage 0): take the skip
                source = block.in_channels - network.encoder.output_channels[0]
            if first:
                # channel 0: above the threshold, channel 1: below it (both >= 0 after
                # LeakyReLU), so their difference is linear in the intensity on both sides
                # and nnU-Net's resampling of the logits keeps the boundary in place.
                block.weight[(0, 0, *centre)] = 10.0
                block.bias[0] = -10.0 * threshold
                block.weight[(1, 0, *centre)] = -10.0
                block.bias[1] = 10.0 * threshold
                first = False
            else:
                block.weight[(0, source, *centre)] = 1.0
                block.weight[(1, source + 1, *centre)] = 1.0
        head = network.decoder.seg_layers[-1].weight
        head[1, 0] = 1.0
        head[1, 1] = -1.0
    return network


def _convs(stage: Any) -> list[Any]:
    import torch

    return [m for m in stage.modules() if isinstance(m, torch.nn.Conv3d)]


def _write_model_folder(
    folder: Path,
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    *,
    trainer_name: str,
    mirroring: tuple[int, ...] | None,
) -> None:
    import torch

    network = _threshold_network(
        plans, dataset_json, trainer_name=trainer_name, threshold_hu=THRESHOLD_HU
    )
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    checkpoint = {
        "network_weights": network.state_dict(),
        "trainer_name": trainer_name,
        "init_args": {"configuration": "3d_fullres", "fold": 0},
        "inference_allowed_mirroring_axes": mirroring,
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")


def _main(root: Path) -> None:
    _write_raw_dataset(root / "raw")
    plans = _plan(root)
    dataset_json = json.loads(
        (root / "raw" / f"Dataset{DATASET_ID}_Threshold" / "dataset.json").read_text()
    )
    models = models_under(root)
    _write_model_folder(
        models.model_folder, plans, dataset_json, trainer_name="nnUNetTrainer", mirroring=(0, 1, 2)
    )
    from pipelines.nnunet_files import totalsegmentator_map

    [part] = totalsegmentator_map()["tasks"]["total"]["modes"]["fastest"]["datasets"]
    assert part["id"] == TOTALSEG_DATASET and part["trainer"] == TOTALSEG_TRAINER
    assert part["labels"]["1"] == TOTALSEG_LABEL_1
    labels = {"background": 0, **{name: int(k) for k, name in part["labels"].items()}}
    ts_plans = {**plans, "dataset_name": TOTALSEG_FOLDER}
    _write_model_folder(
        models.totalseg_weights / TOTALSEG_FOLDER / f"{TOTALSEG_TRAINER}__nnUNetPlans__3d_fullres",
        ts_plans,
        {**dataset_json, "labels": labels},
        trainer_name=TOTALSEG_TRAINER,
        mirroring=None,
    )


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
