"""A bundle's raw outputs -> findings: label maps, boxes and class probabilities.

Names come from the bundle metadata's ``channel_def``; codes from the configured mapping,
else from pydicom's SNOMED CT dictionary when the name is a known concept ("spleen" ->
SCT 78961009), else a local code (scheme ``99PACSANN``, the DICOM way to say "no standard
code") so the SEG and SR stay valid and the admin sees which label to map.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.bundle_geometry import PatientBoxes
from pipelines.findings import RGB, Classification, Detection

logger = logging.getLogger(__name__)

LOCAL_SCHEME = "99PACSANN"
#: Names treated as the background channel / label 0 of a softmax output.
_BACKGROUND = frozenset({"background", "bg", "none", "other"})
#: A probability above this is "present" for per-channel (sigmoid) outputs.
CHANNEL_THRESHOLD = 0.5

LabelMaps = list[tuple[npt.NDArray[np.int32], dict[int, str]]]


@dataclass(frozen=True)
class LabelCode:
    """How one output label is coded in DICOM (SEG segmented property / SR finding)."""

    category: Code
    property_type: Code
    color: RGB | None = None  # the SEG display colour; None: chosen from the code


def label_code(name: str, mapping: Mapping[str, LabelCode]) -> LabelCode:
    """The configured code, else a SNOMED CT concept of that name, else a local code."""
    if name in mapping:
        return mapping[name]
    key = "".join(word.capitalize() for word in re.split(r"[^A-Za-z0-9]+", name) if word)
    try:
        known = getattr(codes.SCT, key)
    except AttributeError:
        logger.warning(
            "label %r has no standard code: using a local code (map it under pipelines.*.labels)",
            name,
        )
        local = Code(f"PA{zlib.crc32(name.encode()):08X}", LOCAL_SCHEME, name[:64])
        return LabelCode(codes.SCT.Tissue, local)
    return LabelCode(codes.SCT.AnatomicalStructure, known)


def channel_names(channel_def: Mapping[str, object]) -> dict[int, str]:
    """``channel_def`` of the bundle metadata as {index: name} (keys are strings there)."""
    names: dict[int, str] = {}
    for key, value in channel_def.items():
        try:
            names[int(key)] = str(value)
        except ValueError:
            continue
    return names


def is_background(name: str | None) -> bool:
    return name is not None and name.strip().casefold() in _BACKGROUND


def label_maps(pred: npt.NDArray[np.float32], names: Mapping[int, str]) -> LabelMaps:
    """Channel-first segmentation output -> label maps with the name of each label.

    One channel of integers is a label map; one channel of floats a probability; several
    channels with channel 0 "background" a softmax (argmax); otherwise independent
    channels (sigmoid), each its own binary map so overlapping structures stay apart.
    """
    if pred.ndim != 4:
        raise ValueError(f"expected a channel-first 3D output, got shape {pred.shape}")
    channels = pred.shape[0]
    if channels == 1:
        values = pred[0]
        if np.array_equal(values, np.rint(values)):
            labels = np.rint(values).astype(np.int32)
            named = {k: v for k, v in names.items() if k != 0}
            for value in np.unique(labels):
                if value > 0 and int(value) not in named:
                    named[int(value)] = f"label {int(value)}"
            return [(labels, named)]
        name = names.get(1) or names.get(0) or "label 1"
        return [((values > CHANNEL_THRESHOLD).astype(np.int32), {1: name})]
    if is_background(names.get(0)):
        labels = np.argmax(pred, axis=0).astype(np.int32)
        return [(labels, {c: names.get(c, f"label {c}") for c in range(1, channels)})]
    probs = pred if float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0 else _sigmoid(pred)
    return [
        ((probs[c] > CHANNEL_THRESHOLD).astype(np.int32), {1: names.get(c, f"label {c}")})
        for c in range(channels)
    ]


def detections(
    boxes: PatientBoxes,
    classes: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    *,
    names: Mapping[int, str],
    codes_by_name: Mapping[str, LabelCode],
    min_score: float,
) -> tuple[Detection, ...]:
    """Detector boxes in patient coordinates with their classes and scores -> detections.

    Best score first; the label is the class name and the rank ("nodule 1").
    """
    centres, lows, highs, sizes = boxes
    if not len(centres) == len(classes) == len(scores):
        raise ValueError(
            f"{len(centres)} boxes but {len(classes)} labels and {len(scores)} scores "
            "(did the post-processing drop boxes without their scores?)"
        )
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return ()
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    found = []
    for rank, index in enumerate(keep, start=1):
        name = names.get(int(classes[index]), f"class {int(classes[index])}")
        size = np.maximum(sizes[index], 1e-3)
        found.append(
            Detection(
                label=f"{name} {rank}",
                finding_type=label_code(name, codes_by_name).property_type,
                centre_mm=_point(centres[index]),
                bbox_min_mm=_point(lows[index]),
                bbox_max_mm=_point(highs[index]),
                longest_diameter_mm=float(size.max()),
                volume_mm3=float(np.pi / 6.0 * np.prod(size)),
                score=float(np.clip(scores[index], 0.0, 1.0)),
            )
        )
    return tuple(found)


def classifications(
    pred: npt.NDArray[np.float32],
    *,
    names: Mapping[int, str],
    codes_by_name: Mapping[str, LabelCode],
) -> tuple[Classification, ...]:
    """Class scores (logits or probabilities) -> one classification per named class."""
    scores = pred.reshape(-1).astype(np.float64)
    if not (scores.min() >= 0.0 and scores.max() <= 1.0):
        exp = np.exp(scores - scores.max())
        scores = exp / exp.sum()
    return tuple(
        Classification(
            code=label_code(names.get(c, f"class {c}"), codes_by_name).property_type,
            probability=float(np.clip(scores[c], 0.0, 1.0)),
        )
        for c in range(scores.size)
        if not is_background(names.get(c))
    )


def _sigmoid(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = (1.0 / (1.0 + np.exp(-values))).astype(np.float32)
    return result


def _point(values: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
