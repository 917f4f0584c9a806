"""End to end: a study sent from Orthanc comes back to Orthanc with a DICOM SEG, no human step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.conftest import shared_data_path
from tests.integration.conftest import RunningService
from tests.support.dicom_validate import dciodvfy_errors, validation_errors
from tests.support.orthanc import Orthanc, wait_for
from tests.support.phantom import make_ct_phantom

pytestmark = pytest.mark.integration

JOB_TIMEOUT = 180.0


def _ct_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def send_and_wait(orthanc: Orthanc, service: RunningService, study_uid: str) -> dict[str, Any]:
    """Ask Orthanc to send the study to the annotator; return the job that finished for it."""
    before = {j["id"] for j in service.jobs() if j["study_uid"] == study_uid}
    study_id = orthanc.study_id_for_uid(study_uid)
    assert study_id, f"Orthanc does not hold study {study_uid}"
    orthanc.store_to_modality("annotator", study_id)

    def finished() -> dict[str, Any] | None:
        for job in service.jobs():
            new = job["study_uid"] == study_uid and job["id"] not in before
            if new and job["state"] in ("done", "failed"):
                return job
        return None

    job = wait_for(finished, timeout=JOB_TIMEOUT, interval=0.5, message="job to finish")
    assert job["state"] == "done", f"job failed: {job['error']}\n{service.log()[-4000:]}"
    return job


def instances_of_modality(orthanc: Orthanc, study_uid: str, modality: str) -> list[str]:
    study_id = orthanc.study_id_for_uid(study_uid)
    assert study_id
    ids: list[str] = []
    for series in orthanc.series_of_study(study_id):
        if series["MainDicomTags"].get("Modality") == modality:
            ids += series["Instances"]
    return ids


def masks_on_source_grid(seg: Dataset, sources: list[Dataset]) -> dict[str, npt.NDArray[np.bool_]]:
    """Rebuild each segment's mask on the source slices from the SEG's per-frame positions."""
    by_position = {
        tuple(round(float(v), 3) for v in ds.ImagePositionPatient): i
        for i, ds in enumerate(sources)
    }
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    masks = {label: np.zeros(shape, dtype=bool) for label in labels.values()}
    pixels = seg.pixel_array.reshape(-1, shape[1], shape[2])
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = tuple(
            round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient
        )
        assert position in by_position, f"SEG frame at {position} matches no source slice"
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        masks[labels[number]][by_position[position]] |= frame.astype(bool)
    return masks


def fetch_one(
    orthanc: Orthanc, study_uid: str, modality: str, tmp_path: Path
) -> tuple[Path, Dataset]:
    ids = instances_of_modality(orthanc, study_uid, modality)
    assert len(ids) == 1, f"expected one {modality} in the study, Orthanc holds {len(ids)}"
    path = orthanc.download_instance(ids[0], tmp_path / f"{modality}.dcm")
    return path, pydicom.dcmread(path)


def check_sr_references_resolve(orthanc: Orthanc, path: Path, sr: Dataset, seg: Dataset) -> None:
    """The SR is valid, and every instance it references is held by the PACS."""
    assert dciodvfy_errors(path) == []
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in referenced
    for uid in referenced:
        found = orthanc.post_json("/tools/lookup", uid)
        assert any(r["Type"] == "Instance" for r in found), f"SR references {uid}, not in PACS"


def check_seg_against_sources(path: Path, seg: Dataset, sources: list[Dataset]) -> None:
    assert dciodvfy_errors(path) == []
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ct-basic"


def test_real_ct_round_trip_gives_one_plausible_seg(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    folder = shared_data_path("ct-abdomen-crlm1004")
    files = _ct_files(folder)
    for path in files:
        orthanc.upload(path)
    sources = [pydicom.dcmread(p) for p in files]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    study_uid = str(sources[0].StudyInstanceUID)

    job = send_and_wait(orthanc, service, study_uid)
    assert job["instances"] == len(files)
    assert job["pipelines"] == ["ct-basic", "ct-lung-nodules"]

    path, seg = fetch_one(orthanc, study_uid, "SEG", tmp_path)
    sr_path, sr = fetch_one(orthanc, study_uid, "SR", tmp_path)
    delivered = [d["sop_instance_uid"] for d in job["delivered"]]
    assert sorted(delivered) == sorted([seg.SOPInstanceUID, sr.SOPInstanceUID])
    check_seg_against_sources(path, seg, sources)
    check_sr_references_resolve(orthanc, sr_path, sr, seg)
    # what the PACS holds passes dciodvfy, PixelMed and dcmqi (one JVM per validator)
    errors = validation_errors([path, sr_path], tmp_path / "validation")
    assert errors == [], "\n".join(errors)
    masks = masks_on_source_grid(seg, sources)
    spacing = [float(v) for v in sources[0].PixelSpacing]
    step = abs(
        float(sources[1].ImagePositionPatient[2]) - float(sources[0].ImagePositionPatient[2])
    )
    voxel_ml = spacing[0] * spacing[1] * step / 1000.0
    body_ml = masks["Body"].sum() * voxel_ml
    lungs_ml = masks["Lungs"].sum() * voxel_ml
    assert lungs_ml > 10, f"lungs nearly empty: {lungs_ml:.1f} mL"
    assert body_ml > 5 * lungs_ml, f"body {body_ml:.0f} mL vs lungs {lungs_ml:.0f} mL"
    for label, mask in masks.items():
        outside = int((mask & ~masks["Body"]).sum())
        assert outside == 0, f"{outside} voxels of {label} lie outside the body"

    # The same study sent again: a second job runs, and the PACS still holds one SEG and SR.
    second = send_and_wait(orthanc, service, study_uid)
    assert second["id"] != job["id"]
    assert sorted(d["sop_instance_uid"] for d in second["delivered"]) == sorted(delivered)
    assert len(instances_of_modality(orthanc, study_uid, "SEG")) == 1
    assert len(instances_of_modality(orthanc, study_uid, "SR")) == 1
    skipped = {o["modality"] for o in second["outcomes"] if o["status"] == "skipped"}
    assert skipped == {"SEG", "SR"}, "our own results, sent back, are skipped"

    log = service.log()
    for ds in sources[:1]:
        for value in (ds.get("PatientName"), ds.get("PatientID"), ds.get("PatientBirthDate")):
            if value and len(str(value)) > 3:
                assert str(value) not in log, "PHI in the service log"


def test_phantom_round_trip_measures_known_lung_volume(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    phantom = make_ct_phantom(shuffle=True, seed=7)
    files = []
    for i, ds in enumerate(phantom.datasets):
        path = tmp_path / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
        files.append(path)
    sources = sorted(phantom.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    study_uid = str(sources[0].StudyInstanceUID)

    job = send_and_wait(orthanc, service, study_uid)
    assert job["instances"] == len(files)

    path, seg = fetch_one(orthanc, study_uid, "SEG", tmp_path)
    check_seg_against_sources(path, seg, sources)
    masks = masks_on_source_grid(seg, sources)
    spacing = [float(v) for v in sources[0].PixelSpacing]
    step = float(sources[1].ImagePositionPatient[2]) - float(sources[0].ImagePositionPatient[2])
    lungs_ml = masks["Lungs"].sum() * spacing[0] * spacing[1] * step / 1000.0
    error = abs(lungs_ml - phantom.lung_volume_ml) / phantom.lung_volume_ml
    assert error < 0.05, f"lungs {lungs_ml:.1f} mL, truth {phantom.lung_volume_ml:.1f} mL"
