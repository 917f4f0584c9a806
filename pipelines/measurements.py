"""Measurements derived from segments: pure functions over a volume and its masks.

Kept apart from the SR writer so the numbers a report states can be tested (and reused
by other writers) without building any DICOM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines.findings import Segment
from pipelines.volume import Volume


@dataclass(frozen=True)
class SegmentMeasurements:
    """Volume of one segment and, on CT, its mean attenuation (Hounsfield units)."""

    label: str
    voxel_count: int
    volume_mm3: float
    mean_hu: float | None

    @property
    def volume_ml(self) -> float:
        return self.volume_mm3 / 1000.0


def measure_segment(volume: Volume, segment: Segment) -> SegmentMeasurements:
    """Sum of segmented voxel volumes, and mean HU when the volume is CT and not empty.

    Raises ``ValueError`` when the mask does not fit the volume.
    """
    if segment.mask.shape != volume.voxels.shape:
        raise ValueError(
            f"segment {segment.label!r}: mask shape {segment.mask.shape} does not match "
            f"the volume {volume.voxels.shape}"
        )
    count = int(np.count_nonzero(segment.mask))
    mean_hu: float | None = None
    if volume.modality == "CT" and count:
        # float64 accumulation: float32 sums over millions of voxels lose HU precision.
        mean_hu = float(volume.voxels[segment.mask].sum(dtype=np.float64) / count)
    return SegmentMeasurements(
        label=segment.label,
        voxel_count=count,
        volume_mm3=count * volume.voxel_volume_mm3,
        mean_hu=mean_hu,
    )


def decimals_for(resolution: float) -> int:
    """Decimal places that still carry information at this resolution (0.7 mm -> 1, 5 mm -> 0).

    A report states a value no finer than the scanner resolves it: more digits suggest a
    precision nobody measured.
    """
    if not (math.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be a positive number, got {resolution}")
    return max(0, math.ceil(-math.log10(resolution) - 1e-9))


def round_to(value: float, resolution: float) -> float:
    """``value`` rounded to the decimal places ``resolution`` supports."""
    return round(value, decimals_for(resolution))


def hu_resolution(volume: Volume) -> float:
    """The step between two CT numbers the scanner can store: its rescale slope (usually 1)."""
    slope = volume.datasets[0].get("RescaleSlope")
    return abs(float(slope)) if slope not in (None, "") and float(slope) != 0 else 1.0
