"""nnU-Net pipelines in the real service and CLI: `pacs-annotator run`, and Orthanc ->
`pacs-annotator up` -> SEG in Orthanc, with the model loaded once for two jobs.

The model folder is planned by nnunetv2 and computes a known threshold
(tests/support/nnunet.py); a second pipeline's checkpoint is corrupt: the worker starts,
says why it cannot load it, and the job routed to it fails with that reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.volume import load_series
from tests.integration.conftest import RunningService, run_up, write_config
from tests.integration.test_bundle_service import orthanc, send_study  # noqa: F401
from tests.integration.test_round_trip import fetch_one
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.nnunet import (
    THRESHOLD_HU,
    NnunetModels,
    threshold_phantom,
)
from tests.support.orthanc import Orthanc
from tests.support.processes import free_port, require_binaries
from tests.unit.pipelines.test_bundle import dice, seg_masks
from worker.cli import EXIT_OK, main

pytestmark = pytest.mark.integration
pytest.importorskip("nnunetv2", reason="nnU-Net pipelines need the nnunet extra")


def _pipelines(models: NnunetModels, broken: Path) -> dict[str, Any]:
    return {
        "dense": {
            "kind": "nnunet",
            "model_folder": str(models.model_folder),
            "mirroring": False,
            "queue": "gpu",
            "labels": {"dense": {"code": "272673000", "meaning": "Bone"}},
        },
        "broken": {"kind": "nnunet", "model_folder": str(broken)},
    }


@pytest.fixture(scope="module")
def broken_model(nnunet_models: NnunetModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(nnunet_models.model_folder, folder)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"truncated")
    return folder


def test_run_writes_a_seg_on_the_source_slices(
    nnunet_models: NnunetModels,
    broken_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = {
        "data_dir": str(tmp_path / "data"),
        "pipelines": _pipelines(nnunet_models, broken_model),
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    datasets = threshold_phantom("axial", seed=51, description="dense axial")
    series = tmp_path / "series"
    series.mkdir()
    for i, ds in enumerate(datasets):
        ds.save_as(series / f"{i:03d}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    args = ["run", "--config", str(tmp_path / "config.yaml"), str(series), "--out", str(out)]
    assert main([*args, "--pipeline", "dense"]) == EXIT_OK
    assert "dense done" in capsys.readouterr().out
    [seg_path] = out.glob("SEG-*.dcm")
    assert dciodvfy_errors(seg_path) == []
    volume = load_series(datasets)
    score = dice(seg_masks(seg_path, volume)["dense"], volume.voxels > THRESHOLD_HU)
    assert score >= 0.9, f"Dice {score:.3f}"
    assert main([*args, "--pipeline", "broken"]) != EXIT_OK
    printed = capsys.readouterr().out
    assert "broken failed" in printed and "cannot be loaded" in printed, printed


@pytest.fixture(scope="module")
def nnunet_service(
    orthanc: Orthanc,  # noqa: F811
    nnunet_models: NnunetModels,
    broken_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningService]:
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("nnunet-service")
    port = free_port()
    path = write_config(root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config["routing"] = [
        {"modality": "CT", "series_description": "*dense*", "pipelines": ["dense"]},
        {"modality": "CT", "series_description": "*broken*", "pipelines": ["broken"]},
    ]
    config["pipelines"] = _pipelines(nnunet_models, broken_model)
    path.write_text(yaml.safe_dump(config))
    with run_up(path, port=port, orthanc=orthanc, timeout=180.0) as running:
        yield running


def test_two_jobs_on_one_warm_model_deliver_aligned_segs(
    orthanc: Orthanc,  # noqa: F811
    nnunet_service: RunningService,
    tmp_path: Path,
) -> None:
    for orientation, seed in (("axial", 52), ("sagittal", 53)):
        datasets = threshold_phantom(orientation, seed=seed, description=f"dense {orientation}")
        (tmp_path / orientation).mkdir()
        job = send_study(orthanc, nnunet_service, datasets, tmp_path / orientation)
        assert job["state"] == "done", f"{job['error']}\n{nnunet_service.log()[-4000:]}"
        assert job["pipelines"] == ["dense"]
        seg_path, _ = fetch_one(
            orthanc, str(datasets[0].StudyInstanceUID), "SEG", tmp_path / orientation
        )
        assert dciodvfy_errors(seg_path) == []
        volume = load_series(datasets)
        masks = seg_masks(seg_path, volume)
        score = dice(masks["dense"], volume.voxels > THRESHOLD_HU)
        assert score >= 0.9, f"{orientation}: Dice {score:.3f}"
    log = nnunet_service.log()
    assert log.count("loaded nnU-Net pipeline dense") == 1, "one load for both jobs"
    assert "cannot load pipeline broken" in log


def test_a_job_for_a_model_that_cannot_load_fails_with_the_reason(
    orthanc: Orthanc,  # noqa: F811
    nnunet_service: RunningService,
    tmp_path: Path,
) -> None:
    job = send_study(
        orthanc, nnunet_service, threshold_phantom("axial", seed=54, description="broken"), tmp_path
    )
    assert job["state"] == "failed"
    assert "cannot be loaded" in job["error"] and "checkpoint_final.pth" in job["error"], job[
        "error"
    ]
