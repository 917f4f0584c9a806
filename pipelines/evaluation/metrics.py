"""Scores of predictions against references: MONAI's metrics, and the detection matching.

Structures: Dice (``monai.metrics.DiceMetric``) and the 95th-percentile Hausdorff distance
in mm (``monai.metrics.HausdorffDistanceMetric`` with the voxel spacing).

Detections, per class: a predicted lesion matches a reference lesion of the same class
when its centre lies within the reference's radius, or within ``match_mm`` of its centre
if that is larger (the rule is stated in the report). Each reference takes at most one
prediction: the highest-scoring one (greedy, best score first); any other prediction
is a false positive. Sensitivity = TP / references, precision = TP / predictions, F1
their harmonic mean. The FROC curve (``monai.metrics.compute_froc_curve_data``) is
sensitivity against false positives per scan as the score threshold falls, and the
FROC score the mean sensitivity at 1/8 ... 8 false positives per scan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from monai.metrics.froc import compute_froc_curve_data, compute_froc_score
from monai.metrics.hausdorff_distance import HausdorffDistanceMetric
from monai.metrics.meandice import DiceMetric

from pipelines.evaluation.references import Lesion

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class StructureScore:
    dice: float
    hd95_mm: float | None  # None when either mask is empty (undefined)


def structure_score(
    predicted: npt.NDArray[np.bool_],
    reference: npt.NDArray[np.bool_],
    spacing: tuple[float, float, float],
) -> StructureScore:
    """Dice and HD95 (mm) of one structure, with MONAI's metrics."""
    pred = torch.from_numpy(np.ascontiguousarray(predicted))[None, None].float()
    ref = torch.from_numpy(np.ascontiguousarray(reference))[None, None].float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    dice_value = _scalar(dice(pred, ref))
    if not predicted.any() or not reference.any():
        return StructureScore(dice=dice_value, hd95_mm=None)
    hausdorff = HausdorffDistanceMetric(include_background=True, percentile=95.0, reduction="none")
    hd95 = _scalar(hausdorff(pred, ref, spacing=list(spacing)))
    return StructureScore(dice=dice_value, hd95_mm=hd95)


def _scalar(value: object) -> float:
    """The one value of a metric called on one image (MONAI returns a 1x1 tensor)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor from the metric, got {type(value).__name__}")
    return float(value.item())


@dataclass(frozen=True)
class Match:
    """The outcome of matching one scan's lesions of one class."""

    true_positive_scores: list[float]
    false_positive_scores: list[float]
    references: int
    matched_references: list[bool]
    predicted_hits: list[bool]


def match_lesions(
    predicted: Sequence[Lesion], reference: Sequence[Lesion], match_mm: float
) -> Match:
    """Greedy matching, best score first (see the module's docstring)."""
    order = sorted(range(len(predicted)), key=lambda i: -predicted[i].score)
    taken = [False] * len(reference)
    hits = [False] * len(predicted)
    tp: list[float] = []
    fp: list[float] = []
    for i in order:
        lesion = predicted[i]
        centre = np.asarray(lesion.centre_mm)
        best, best_distance = None, math.inf
        for j, target in enumerate(reference):
            if taken[j]:
                continue
            distance = float(np.linalg.norm(centre - np.asarray(target.centre_mm)))
            if distance <= max(target.diameter_mm / 2.0, match_mm) and distance < best_distance:
                best, best_distance = j, distance
        if best is None:
            fp.append(lesion.score)
        else:
            taken[best] = True
            hits[i] = True
            tp.append(lesion.score)
    return Match(tp, fp, len(reference), taken, hits)


@dataclass(frozen=True)
class DetectionScore:
    references: int
    predictions: int
    true_positives: int
    sensitivity: float | None
    precision: float | None
    f1: float | None
    froc_fps_per_scan: list[float]
    froc_sensitivity: list[float]
    froc_score: float | None


def detection_score(matches: Sequence[Match], scans: int) -> DetectionScore:
    """Totals and the FROC curve of one class over ``scans`` scans."""
    tp_scores = [s for m in matches for s in m.true_positive_scores]
    fp_scores = [s for m in matches for s in m.false_positive_scores]
    references = sum(m.references for m in matches)
    predictions = len(tp_scores) + len(fp_scores)
    tp = len(tp_scores)
    sensitivity = tp / references if references else None
    precision = tp / predictions if predictions else None
    f1 = None
    if sensitivity is not None and precision is not None:
        f1 = 2 * sensitivity * precision / (sensitivity + precision) if tp else 0.0
    fps: list[float] = []
    sens: list[float] = []
    froc = None
    if references and scans:
        fp_rates, tp_rates = compute_froc_curve_data(
            fp_probs=np.asarray(fp_scores, dtype=np.float64),
            tp_probs=np.asarray(tp_scores, dtype=np.float64),
            num_targets=references,
            num_images=scans,
        )
        fps = [float(v) for v in fp_rates]
        sens = [float(v) for v in tp_rates]
        if fps:
            froc = float(compute_froc_score(np.asarray(fps), np.asarray(sens), FROC_FP_RATES))
    return DetectionScore(references, predictions, tp, sensitivity, precision, f1, fps, sens, froc)
