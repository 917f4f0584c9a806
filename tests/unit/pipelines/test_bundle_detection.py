"""A RetinaNet detection bundle (MONAI's RetinaNet + RetinaNetDetector, Model Zoo layout),
trained for a few seconds in the test, runs through the whole path to detections in the SR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monai.bundle.config_parser import ConfigParser

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.routing import RoutingRule
from pipelines.runner import annotate_study
from pipelines.volume import load_series
from tests.support.bundles import detection_config, train_detector, write_bundle
from tests.support.dicom_validate import validation_report
from tests.support.phantom import Nodule, make_ct_phantom

#: Only the bright sphere is visible after the bundle's intensity window.
WINDOW = (1000.0, 1500.0)
SPHERE = Nodule((-20.0, 10.0, 15.0), 32.0)


@pytest.fixture(scope="module")
def detection_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = detection_config(intensity=WINDOW, pixdim=(4.0, 4.0, 4.0))
    parser = ConfigParser(config)
    detector = parser.get_parsed_content("detector")
    parser.get_parsed_content("detector_ops")
    train_detector(detector, steps=30, shape=(32, 32, 24))
    return write_bundle(
        tmp_path_factory.mktemp("bundles") / "sphere_detector",
        config,
        channel_def={"0": "nodule"},
        state_dict=detector.network.state_dict(),
        output_format="object detection",
    )


def test_detection_bundle_finds_the_sphere_where_it_is(
    detection_bundle: Path, tmp_path: Path
) -> None:
    phantom = make_ct_phantom(
        slices=24,
        size=40,
        pixel_spacing=4.0,
        slice_spacing=4.0,
        orientation="sagittal",
        nodules=[SPHERE],
        nodule_hu=1500.0,
    )
    pipeline = BundlePipeline(BundleSpec(name="spheres", path=detection_bundle, min_score=0.5))
    findings = pipeline.run(load_series(phantom.datasets))
    assert findings.detections, "the trained detector finds the sphere"
    best = findings.detections[0]
    assert best.label == "nodule 1"
    assert best.finding_type.value == "27925004"  # SCT Nodule, looked up by the class name
    error = np.linalg.norm(np.subtract(best.centre_mm, SPHERE.centre))
    assert error < 6.0, f"centre {best.centre_mm} is {error:.1f} mm from {SPHERE.centre}"
    assert 20.0 < best.longest_diameter_mm < 45.0
    assert all(
        lo <= c <= hi
        for lo, c, hi in zip(best.bbox_min_mm, SPHERE.centre, best.bbox_max_mm, strict=True)
    )

    folder = tmp_path / "in"
    folder.mkdir()
    for i, ds in enumerate(phantom.datasets):
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    result = annotate_study(
        sorted(folder.glob("*.dcm")),
        rules=(RoutingRule(pipelines=("spheres",), modality="CT"),),
        pipelines={"spheres": pipeline},
        software_version="9.9.9",
    )
    [outcome] = result.outcomes
    assert outcome.status == "done" and "detection(s) (in the SR)" in (outcome.reason or "")
    assert result.report is not None
    path = tmp_path / "sr.dcm"
    result.report.save_as(path, enforce_file_format=True)
    # dciodvfy, PixelMed's DicomSRValidator and dcmqi's tid1500reader
    errors = validation_report(path, tmp_path).errors
    assert errors == [], "\n".join(errors)
    texts = [str(e.value) for e in result.report.iterall() if e.keyword == "TextValue"]
    assert "nodule 1" in texts, texts
    assert pipeline.load_count == 1
