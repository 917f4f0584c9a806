"""ct-lung-nodules: known spheres found and measured, vessels left out, findings validated."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from pipelines.ct_basic import segment_body, segment_lungs
from pipelines.ct_lung_nodules import (
    LEFT_LUNG,
    RIGHT_LUNG,
    THRESHOLD_PEER,
    CtLungNodulesPipeline,
    detect_nodules,
)
from pipelines.findings import Classification, Detection, Findings
from pipelines.volume import Volume
from tests.support.phantom import LUNG_NODULES, LUNG_VESSELS, Vessel


def _distance_to_axis(point: np.ndarray, vessel: Vessel) -> float:
    start, end = np.array(vessel.start), np.array(vessel.end)
    axis = end - start
    t = float(np.clip((point - start) @ axis / (axis @ axis), 0.0, 1.0))
    return float(np.linalg.norm(point - (start + t * axis)))


def test_every_nodule_of_6_mm_or_more_is_found_and_measured(nodule_findings: Findings) -> None:
    detections = nodule_findings.detections
    for nodule in (n for n in LUNG_NODULES if n.diameter >= 6.0):
        centre = np.array(nodule.centre)
        nearest = min(detections, key=lambda d: np.linalg.norm(np.array(d.centre_mm) - centre))
        assert np.linalg.norm(np.array(nearest.centre_mm) - centre) <= 2.0, nodule
        assert nearest.longest_diameter_mm == pytest.approx(nodule.diameter, rel=0.2), nodule
        true_volume = math.pi / 6.0 * nodule.diameter**3
        assert nearest.volume_mm3 == pytest.approx(true_volume, rel=0.35), nodule
        assert nearest.finding_type == codes.SCT.Nodule
        assert nearest.finding_site == (LEFT_LUNG if nodule.centre[0] > 0 else RIGHT_LUNG)
        assert 0.5 <= nearest.score <= 1.0


def test_vessels_are_not_reported(nodule_findings: Findings) -> None:
    for detection in nodule_findings.detections:
        centre = np.array(detection.centre_mm)
        near_vessel = [v for v in LUNG_VESSELS if _distance_to_axis(centre, v) < v.diameter]
        assert not near_vessel, detection
    # Only the spheres: nothing reported away from them either.
    for detection in nodule_findings.detections:
        centre = np.array(detection.centre_mm)
        assert min(np.linalg.norm(centre - np.array(n.centre)) for n in LUNG_NODULES) < 3.0


def test_threshold_peer_reports_vessel_fragments(nodule_volume: Volume) -> None:
    """The shape filter is what removes vessels: without it they come back."""
    body = segment_body(nodule_volume.voxels, nodule_volume.spacing)
    lungs = segment_lungs(nodule_volume.voxels, body, nodule_volume.spacing)
    peer = detect_nodules(nodule_volume.voxels, lungs, nodule_volume.affine, THRESHOLD_PEER)
    on_vessels = [
        c
        for c in peer
        if any(_distance_to_axis(np.array(c.centre_mm), v) < v.diameter for v in LUNG_VESSELS)
    ]
    assert on_vessels


def test_scores_rank_best_first_and_labels_are_numbered(nodule_findings: Findings) -> None:
    scores = [d.score for d in nodule_findings.detections]
    assert scores == sorted(scores, reverse=True)
    labels = [d.label for d in nodule_findings.detections]
    assert labels == [f"Nodule {n}" for n in range(1, len(labels) + 1)]


def test_empty_lungs_give_no_detections(phantom_volume: Volume) -> None:
    findings = CtLungNodulesPipeline().run(phantom_volume)
    assert findings.detections == () and findings.segments == ()
    assert findings.is_empty


def _detection(**overrides: object) -> Detection:
    values: dict[str, object] = {
        "label": "Nodule 1",
        "finding_type": codes.SCT.Nodule,
        "centre_mm": (1.0, 2.0, 3.0),
        "bbox_min_mm": (0.0, 1.0, 2.0),
        "bbox_max_mm": (2.0, 3.0, 4.0),
        "longest_diameter_mm": 2.0,
        "volume_mm3": 4.0,
        "score": 0.5,
    }
    values.update(overrides)
    return Detection(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"score": 1.5}, "score must be within 0..1"),
        ({"score": -0.1}, "score must be within 0..1"),
        ({"score": math.nan}, "score must be within 0..1"),
        ({"label": ""}, "label must not be empty"),
        ({"volume_mm3": 0.0}, "volume_mm3 must be > 0"),
        ({"longest_diameter_mm": -1.0}, "longest_diameter_mm must be > 0"),
        ({"centre_mm": (1.0, 2.0)}, "centre_mm must be 3 finite numbers"),
        ({"bbox_min_mm": (5.0, 1.0, 2.0)}, "bbox_min_mm exceeds bbox_max_mm"),
    ],
)
def test_detection_validates_its_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _detection(**overrides)


def test_classification_probability_is_validated() -> None:
    Classification(codes.SCT.Nodule, 1.0)
    with pytest.raises(ValueError, match=r"probability must be within 0\.\.1"):
        Classification(codes.SCT.Nodule, 1.01)
