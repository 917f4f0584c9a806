"""Settings of nnU-Net and TotalSegmentator pipelines: checked at start-up, never downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines.nnunet_files import ModelFolder
from tests.support.nnunet import placeholder_model_folder, placeholder_totalsegmentator
from worker.config import (
    BundlePipelineSettings,
    NnunetPipelineSettings,
    SettingsError,
    TotalSegmentatorPipelineSettings,
    load_settings,
)
from worker.jobs.queues import configured_queues

pytest.importorskip("nnunetv2", reason="nnU-Net pipelines need the nnunet extra")


def refusal(tmp_path: Path, **settings: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, data_dir=tmp_path, **settings)
    return str(info.value)


def test_a_model_folder_pipeline_has_the_issue_settings(tmp_path: Path) -> None:
    folder = placeholder_model_folder(tmp_path / "model", folds=(0, 1))
    settings = load_settings(
        None,
        data_dir=tmp_path,
        pipelines={
            "liver": {
                "kind": "nnunet",
                "model_folder": str(folder),
                "folds": [0, "1"],
                "checkpoint": "checkpoint_final.pth",
                "mirroring": False,
                "step_size": 0.75,
                "queue": "gpu",
                "time_limit_seconds": 300,
            }
        },
    )
    liver = settings.pipelines["liver"]
    assert isinstance(liver, NnunetPipelineSettings)
    assert liver.folder() == ModelFolder(path=folder, folds=(0, 1))
    assert (liver.mirroring, liver.step_size, liver.queue) == (False, 0.75, "gpu")
    assert "gpu" in configured_queues(settings)


def test_missing_weights_name_the_file_expected(tmp_path: Path) -> None:
    folder = placeholder_model_folder(tmp_path / "model")
    message = refusal(
        tmp_path,
        pipelines={"liver": {"kind": "nnunet", "model_folder": str(folder), "folds": [0, 3]}},
    )
    assert f"{folder}/fold_3/checkpoint_final.pth" in message
    shutil.rmtree(folder)
    assert f"nnU-Net model folder {folder} does not exist" in refusal(
        tmp_path, pipelines={"liver": {"kind": "nnunet", "model_folder": str(folder)}}
    )


@pytest.mark.parametrize(
    ("field", "value"), [("folds", ["x"]), ("step_size", 0), ("orientation", "RAR")]
)
def test_bad_values_are_refused(tmp_path: Path, field: str, value: object) -> None:
    folder = placeholder_model_folder(tmp_path / "model")
    message = refusal(
        tmp_path,
        pipelines={"m": {"kind": "nnunet", "model_folder": str(folder), field: value}},
    )
    assert f"  pipelines.m.{field}: " in message


def test_a_totalsegmentator_task_finds_its_dataset_folders(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    folders = placeholder_totalsegmentator(weights, "total", "default")
    settings = load_settings(
        None,
        data_dir=tmp_path,
        pipelines={"totalseg": {"kind": "totalsegmentator", "weights_dir": str(weights)}},
    )
    pipeline = settings.pipelines["totalseg"]
    assert isinstance(pipeline, TotalSegmentatorPipelineSettings)
    task = pipeline.resolve()
    assert [folder.path for folder in task.folders] == folders
    assert len(folders) == 5
    assert task.modality == "CT"
    # the part models' own label names (TotalSegmentator's map_to_binary), not dataset.json's
    assert task.folders[0].labels is not None and task.folders[0].labels[1] == "spleen"
    assert "vertebrae_L1" in task.folders[1].labels.values()  # type: ignore[union-attr]


def test_missing_totalsegmentator_weights_name_the_folder_expected(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    message = refusal(
        tmp_path,
        pipelines={
            "totalseg": {
                "kind": "totalsegmentator",
                "task": "total",
                "mode": "fast",
                "weights_dir": str(weights),
            }
        },
    )
    assert (
        f"{weights}/Dataset297_*/nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
        in message
    )
    assert "totalseg_download_weights -t total" in message
    assert "does not exist" in refusal(
        tmp_path,
        pipelines={"t": {"kind": "totalsegmentator", "weights_dir": str(tmp_path / "none")}},
    )
    assert "unknown TotalSegmentator task 'everything'" in refusal(
        tmp_path,
        pipelines={
            "t": {"kind": "totalsegmentator", "task": "everything", "weights_dir": str(weights)}
        },
    )


def test_a_bundle_is_still_a_bundle(tmp_path: Path) -> None:
    from tests.support.jobs import settings_only_bundle

    bundle = settings_only_bundle(tmp_path / "bundle")
    settings = load_settings(
        None, data_dir=tmp_path, pipelines={"b": {"bundle": str(bundle), "kind": "segmentation"}}
    )
    assert isinstance(settings.pipelines["b"], BundlePipelineSettings)
