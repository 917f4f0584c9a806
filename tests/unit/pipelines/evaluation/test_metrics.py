"""Evaluation metrics against values computed by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.evaluation.metrics import detection_score, match_lesions, structure_score
from pipelines.evaluation.references import Lesion


def test_dice_and_hd95_of_two_squares() -> None:
    # Reference: a 4x4 square; prediction: the same square shifted 2 columns right.
    reference = np.zeros((1, 10, 10), dtype=bool)
    reference[0, 2:6, 2:6] = True
    predicted = np.zeros_like(reference)
    predicted[0, 2:6, 4:8] = True
    score = structure_score(predicted, reference, (3.0, 0.5, 2.0))
    # Overlap 4x2 = 8 voxels of 16 + 16: Dice = 2 * 8 / 32.
    assert score.dice == pytest.approx(0.5)
    # Edge voxels: 12 per square. The 4 on the reference's column 2 are 2 columns
    # (2 x 2 mm = 4 mm) from the prediction's nearest edge voxel (column 4, same row);
    # no edge voxel is farther, in either direction. A third of them at the maximum: the
    # 95th percentile is that maximum, 4 mm.
    assert score.hd95_mm == pytest.approx(4.0)


def test_empty_prediction_scores_zero_and_no_distance() -> None:
    reference = np.zeros((2, 4, 4), dtype=bool)
    reference[0, 1:3, 1:3] = True
    score = structure_score(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert score.dice == 0.0
    assert score.hd95_mm is None


def test_matching_rule_and_totals() -> None:
    reference = [
        Lesion((0.0, 0.0, 0.0), 20.0, "Nodule"),  # radius 10 mm
        Lesion((100.0, 0.0, 0.0), 4.0, "Nodule"),  # radius 2 mm: the 5 mm rule applies
        Lesion((-100.0, 0.0, 0.0), 8.0, "Nodule"),  # missed
    ]
    predicted = [
        Lesion((9.0, 0.0, 0.0), 15.0, "Nodule", 0.9),  # inside lesion 1 (9 <= 10)
        Lesion((3.0, 0.0, 0.0), 15.0, "Nodule", 0.5),  # lesion 1 again: a false positive
        Lesion((104.0, 0.0, 0.0), 5.0, "Nodule", 0.7),  # 4 mm from lesion 2 (<= 5 mm)
        Lesion((50.0, 0.0, 0.0), 5.0, "Nodule", 0.2),  # nowhere
    ]
    match = match_lesions(predicted, reference, match_mm=5.0)
    assert match.matched_references == [True, True, False]
    assert match.predicted_hits == [True, False, True, False]
    assert sorted(match.true_positive_scores) == [0.7, 0.9]
    assert sorted(match.false_positive_scores) == [0.2, 0.5]
    score = detection_score([match], scans=2)
    assert (score.references, score.predictions, score.true_positives) == (3, 4, 2)
    assert score.sensitivity == pytest.approx(2 / 3)
    assert score.precision == pytest.approx(2 / 4)
    assert score.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    # MONAI's FROC points (thresholds: every score above the lowest), per scan of 2:
    # >= 0.5: 2 TP, 1 FP; >= 0.7: 2 TP, 0 FP; >= 0.9: 1 TP, 0 FP; then the origin.
    assert score.froc_fps_per_scan == pytest.approx([0.5, 0.0, 0.0, 0.0])
    assert score.froc_sensitivity == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.0])
    # Sensitivity interpolated at 1/8 ... 8 FP per scan: 2/3 at every rate, mean 2/3.
    assert score.froc_score == pytest.approx(2 / 3)


def test_a_closer_lesion_is_preferred_and_classes_do_not_mix() -> None:
    reference = [Lesion((0.0, 0.0, 0.0), 30.0, "Nodule"), Lesion((6.0, 0.0, 0.0), 30.0, "Nodule")]
    match = match_lesions([Lesion((5.0, 0.0, 0.0), 9.0, "Nodule", 1.0)], reference, 1.0)
    assert match.matched_references == [False, True]
    none = detection_score([match_lesions([], [], 10.0)], scans=1)
    assert none.sensitivity is None and none.precision is None and none.f1 is None
    assert not math.isnan(detection_score([match], 1).sensitivity or 0.0)
