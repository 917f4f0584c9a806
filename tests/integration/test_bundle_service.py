"""Bundle pipelines in the real service: Orthanc -> `pacs-annotator up` -> SEG in Orthanc.

The bundle pipeline is on queue "gpu" (served here by the `up` worker on the CPU, which
takes every configured queue), so the job travels the queue routing; a second, slow
bundle with a time limit is stopped by Celery's soft time limit and its job fails with
that reason while the worker goes on. The Model Zoo lung nodule detector, unmodified (with
constructed weights), puts its box on the source slice through the nodule in the SR.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from pipelines.volume import load_series
from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningService, run_up, write_config
from tests.integration.test_round_trip import fetch_one
from tests.support.bundles import (
    CONV_1X1X1,
    segmentation_config,
    threshold_weights,
    write_bundle,
)
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.lung_nodule_bundle import (
    assert_sr_box_on_the_nodule,
    chest,
    copy_bundle,
    write_blob_weights,
)
from tests.support.orthanc import Orthanc, require_orthanc, wait_for
from tests.support.phantom import Nodule, make_ct_phantom
from tests.support.processes import (
    free_port,
    require_binaries,
)
from tests.unit.pipelines.test_bundle import seg_masks

pytestmark = pytest.mark.integration

JOB_TIMEOUT = 240.0
JOB_TIME_LIMIT = 20.0


@pytest.fixture(scope="module")
def orthanc() -> Iterator[Orthanc]:
    require_orthanc()
    with Orthanc(graceful_stop=False) as server:  # throwaway storage: killed, not stopped
        yield server


@pytest.fixture(scope="module")
def bundle_service(
    orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    require_binaries("redis-server")
    root = tmp_path_factory.mktemp("bundle-service")
    dense = write_bundle(
        root / "dense",
        segmentation_config(CONV_1X1X1, pixdim=(3.0, 3.0, 5.0)),
        channel_def={"0": "background", "1": "bone"},
        state_dict=threshold_weights(300.0),
    )
    slow = write_bundle(
        root / "slow",
        segmentation_config({"_target_": "tests.support.bundles.SlowNet"}, pixdim=None),
        channel_def={"0": "background", "1": "bone"},
        state_dict={},
    )
    lung = copy_bundle(root)
    write_blob_weights(lung)
    port = free_port()
    path = write_config(root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    config["routing"] = [
        {"modality": "CT", "series_description": "*dense*", "pipelines": ["dense"]},
        {"modality": "CT", "series_description": "*slow*", "pipelines": ["slow"]},
        {"modality": "CT", "series_description": "*chest*", "pipelines": ["lung"]},
    ]
    config["pipelines"] = {
        "dense": {"bundle": str(dense), "queue": "gpu"},
        "slow": {"bundle": str(slow), "queue": "gpu", "time_limit_seconds": 5},
        "lung": {"bundle": str(lung), "class_names": ["nodule"]},
    }
    config["worker"] = {"job_time_limit_seconds": JOB_TIME_LIMIT}
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))  # the slow network's module
    with run_up(path, port=port, orthanc=orthanc, env=env, cwd=REPO_ROOT) as running:
        yield running


def send_study(
    orthanc: Orthanc, service: RunningService, datasets: list[pydicom.Dataset], tmp_path: Path
) -> dict[str, Any]:
    for i, ds in enumerate(datasets):
        path = tmp_path / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    study_uid = str(datasets[0].StudyInstanceUID)
    study_id = orthanc.study_id_for_uid(study_uid)
    assert study_id
    orthanc.store_to_modality("annotator", study_id)

    def finished() -> dict[str, Any] | None:
        for job in service.jobs():
            if job["study_uid"] == study_uid and job["state"] in ("done", "failed"):
                return job
        return None

    job: dict[str, Any] = wait_for(
        finished, timeout=JOB_TIMEOUT, interval=0.5, message="job to finish"
    )
    return job


def test_bundle_job_on_its_queue_delivers_an_aligned_seg(
    orthanc: Orthanc, bundle_service: RunningService, tmp_path: Path
) -> None:
    phantom = make_ct_phantom(
        slices=40,
        size=112,
        pixel_spacing=2.5,
        slice_spacing=4.0,
        orientation="sagittal",
        shuffle=True,
        seed=41,
        nodules=[Nodule((-30.0, 5.0, 30.0), 40.0)],
        nodule_hu=700.0,
    )
    for ds in phantom.datasets:
        ds.SeriesDescription = "dense sagittal"
    job = send_study(orthanc, bundle_service, phantom.datasets, tmp_path)
    assert job["state"] == "done", f"{job['error']}\n{bundle_service.log()[-4000:]}"
    assert job["pipelines"] == ["dense"]
    path, _ = fetch_one(orthanc, str(phantom.datasets[0].StudyInstanceUID), "SEG", tmp_path)
    assert dciodvfy_errors(path) == []
    volume = load_series(phantom.datasets)
    bone = seg_masks(path, volume)["bone"]
    truth = volume.voxels > 300.0
    dice = 2.0 * (bone & truth).sum() / (bone.sum() + truth.sum())
    assert dice >= 0.93, f"Dice {dice:.3f}"
    assert "gpu" in bundle_service.log(), "the job went through the pipeline's queue"


def test_a_job_over_its_time_limit_fails_with_that_reason(
    orthanc: Orthanc, bundle_service: RunningService, tmp_path: Path
) -> None:
    phantom = make_ct_phantom(slices=8, size=48, pixel_spacing=6.0, seed=42)
    for ds in phantom.datasets:
        ds.SeriesDescription = "slow"
    job = send_study(orthanc, bundle_service, phantom.datasets, tmp_path)
    assert job["state"] == "failed"
    assert job["error"].startswith("time limit exceeded"), job["error"]
    assert f"{JOB_TIME_LIMIT:.0f} s" in job["error"]
    # The worker survived: it answers the next job.
    again = make_ct_phantom(slices=16, size=64, pixel_spacing=5.0, seed=43)
    for ds in again.datasets:
        ds.SeriesDescription = "dense"
    (tmp_path / "again").mkdir()
    next_job = send_study(orthanc, bundle_service, again.datasets, tmp_path / "again")
    assert next_job["state"] == "done", next_job["error"]


def test_model_zoo_detector_delivers_its_box_on_the_source_slice(
    orthanc: Orthanc, bundle_service: RunningService, tmp_path: Path
) -> None:
    datasets = chest((1.0, 0.0, 0.0, 0.0, -1.0, 0.0), description="chest, rows flipped")
    job = send_study(orthanc, bundle_service, datasets, tmp_path)
    assert job["state"] == "done", f"{job['error']}\n{bundle_service.log()[-4000:]}"
    assert job["pipelines"] == ["lung"]
    path, _ = fetch_one(orthanc, str(datasets[0].StudyInstanceUID), "SR", tmp_path)
    assert dciodvfy_errors(path) == []
    assert_sr_box_on_the_nodule(path, datasets)
