"""`pacs-annotator send` against the real Orthanc: a folder in, every instance stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import write_config
from tests.support.orthanc import Orthanc
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


def test_send_stores_a_folder_in_the_pacs(orthanc: Orthanc, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.yaml", data_dir=tmp_path / "data", port=free_port(), orthanc=orthanc
    )
    folder = tmp_path / "series"
    (folder / "nested").mkdir(parents=True)
    datasets = make_ct_phantom(slices=6, size=32, pixel_spacing=11.0, seed=3).datasets
    for i, ds in enumerate(datasets):
        ds.save_as(folder / "nested" / f"{i}.dcm", enforce_file_format=True)
    (folder / "README.txt").write_text("not DICOM")

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "send",
            str(folder),
            "--to",
            "orthanc",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The non-DICOM file is reported as failed (exit 1); every instance still arrives.
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sent 6 of 7 instances" in result.stdout
    assert "README.txt" in result.stderr
    study_id = orthanc.study_id_for_uid(datasets[0].StudyInstanceUID)
    assert study_id
    (series,) = orthanc.series_of_study(study_id)
    assert len(series["Instances"]) == 6
