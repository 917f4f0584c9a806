"""Through the running service: a tilted, unevenly spaced head CT and an enhanced CT come
back from Orthanc's point of view with a SEG on their own images and an SR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.legacy import LegacyConvertedEnhancedCTImage

from tests.conftest import shared_data_path
from tests.integration.conftest import RunningService
from tests.integration.test_round_trip import fetch_one, send_and_wait
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.orthanc import Orthanc
from tests.support.tilted import make_sphere_stack, seg_sphere

pytestmark = pytest.mark.integration


def test_a_tilted_unevenly_spaced_head_ct_comes_back_with_results(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    positions = [float(v) for v in np.cumsum([2.5] * 14 + [5.0] * 8 + [2.5] * 10) - 52.5]
    stack = make_sphere_stack(tilt_degrees=20.0, table_positions=positions)
    for n, ds in enumerate(stack.datasets):
        path = tmp_path / f"ct{n:03}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)
    study_uid = str(stack.datasets[0].StudyInstanceUID)

    job = send_and_wait(orthanc, service, study_uid)
    done = [o for o in job["outcomes"] if o["pipeline"] == "ct-basic"]
    assert [o["status"] for o in done] == ["done"]
    assert "gantry tilt 20.0 degrees" in done[0]["reason"]

    seg_path, seg = fetch_one(orthanc, study_uid, "SEG", tmp_path)
    sr_path, _ = fetch_one(orthanc, study_uid, "SR", tmp_path)
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    labels = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    # ct-basic calls the dense sphere bone: it comes back where it is, as large as it is.
    sphere = seg_sphere(seg, labels["Bone"], stack.datasets)
    assert sphere.volume_mm3 == pytest.approx(stack.sphere_volume_mm3, rel=0.05)
    assert np.linalg.norm(sphere.centre - stack.centre) < 1.0
    sources = {
        tuple(np.round(np.array(ds.ImagePositionPatient, float), 3)) for ds in stack.datasets
    }
    assert all(tuple(np.round(p, 3)) in sources for p in sphere.frame_positions)


def test_an_enhanced_ct_comes_back_with_results_on_its_frames(
    orthanc: Orthanc, service: RunningService, tmp_path: Path
) -> None:
    folder = shared_data_path("ct-abdomen-crlm1004")
    sources = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    enhanced = LegacyConvertedEnhancedCTImage(
        sources,
        series_instance_uid="2.25.419001",
        series_number=79,
        sop_instance_uid="2.25.419002",
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    orthanc.upload(path)

    job = send_and_wait(orthanc, service, str(enhanced.StudyInstanceUID))
    mine = [o for o in job["outcomes"] if o["series_uid"] == "2.25.419001"]
    assert {o["pipeline"]: o["status"] for o in mine} == {
        "ct-basic": "done",
        "ct-lung-nodules": "done",
    }
    seg_path, seg = fetch_one(orthanc, str(enhanced.StudyInstanceUID), "SEG", tmp_path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "2.25.419001"
    for item in seg.PerFrameFunctionalGroupsSequence:
        [source] = item.DerivationImageSequence[0].SourceImageSequence
        assert source.ReferencedSOPInstanceUID == "2.25.419002"
        assert 1 <= int(source.ReferencedFrameNumber) <= len(sources)
    assert dciodvfy_errors(seg_path) == []
