"""Findings: what a pipeline says about a volume, independent of how it is written to DICOM."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydicom.sr.coding import Code


@dataclass(frozen=True)
class Algorithm:
    """Identity of the algorithm that produced a result (IHE AI Results provenance)."""

    name: str
    version: str
    manufacturer: str = "pacs-annotator"


RGB = tuple[int, int, int]
#: SNOMED CT segment categories of anatomy: "Anatomical Structure" (91723000, and 123037004
#: as DICOM CID 7150 codes it) and "Tissue" (85756007).
ANATOMY_CATEGORIES = frozenset({"91723000", "123037004", "85756007"})


@dataclass(frozen=True, eq=False)
class Segment:
    """One segmented structure: a boolean mask over the volume's voxel grid.

    ``color`` is the display colour the pipeline wants (sRGB); None lets the SEG writer
    choose the anatomical colour of ``property_type`` (see ``pipelines.colors``).
    ``property_modifier`` qualifies the type, e.g. laterality (SCT 7771000 "Left").
    """

    label: str
    mask: npt.NDArray[np.bool_]
    category: Code
    property_type: Code
    color: RGB | None = None
    property_modifier: Code | None = None

    @property
    def is_anatomy(self) -> bool:
        """A structure of the body (category anatomical structure or tissue), not a finding
        such as a lesion: context for a radiologist, an ORGAN in an RTSTRUCT."""
        return (
            self.category.scheme_designator in ("SCT", "SRT")
            and self.category.value in ANATOMY_CATEGORIES
        )

    def __post_init__(self) -> None:
        if self.mask.dtype != np.bool_:
            raise TypeError(f"Segment {self.label!r}: mask must be boolean, got {self.mask.dtype}")
        if not self.label:
            raise ValueError("Segment label must not be empty")
        if self.color is not None and (
            len(self.color) != 3 or not all(0 <= v <= 255 for v in self.color)
        ):
            raise ValueError(f"Segment {self.label!r}: color must be 3 values in 0..255")


Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class Detection:
    """One localised finding (e.g. a nodule), in patient coordinates (LPS, mm).

    ``score`` is the algorithm's confidence in 0..1 (not a calibrated probability unless
    the algorithm says so); ``label`` is a human-readable tracking identifier.
    """

    label: str
    finding_type: Code
    centre_mm: Point3
    bbox_min_mm: Point3
    bbox_max_mm: Point3
    longest_diameter_mm: float
    volume_mm3: float
    score: float
    finding_site: Code | None = None

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError("Detection label must not be empty")
        for name in ("centre_mm", "bbox_min_mm", "bbox_max_mm"):
            point = getattr(self, name)
            if len(point) != 3 or not all(math.isfinite(v) for v in point):
                raise ValueError(f"Detection {self.label!r}: {name} must be 3 finite numbers")
        if any(lo > hi for lo, hi in zip(self.bbox_min_mm, self.bbox_max_mm, strict=True)):
            raise ValueError(f"Detection {self.label!r}: bbox_min_mm exceeds bbox_max_mm")
        if not (math.isfinite(self.longest_diameter_mm) and self.longest_diameter_mm > 0):
            raise ValueError(
                f"Detection {self.label!r}: longest_diameter_mm must be > 0, "
                f"got {self.longest_diameter_mm}"
            )
        if not (math.isfinite(self.volume_mm3) and self.volume_mm3 > 0):
            raise ValueError(
                f"Detection {self.label!r}: volume_mm3 must be > 0, got {self.volume_mm3}"
            )
        _check_unit_interval("Detection", self.label, "score", self.score)


@dataclass(frozen=True)
class Classification:
    """A study- or series-level label with its probability (0..1)."""

    code: Code
    probability: float

    def __post_init__(self) -> None:
        _check_unit_interval("Classification", self.code.meaning, "probability", self.probability)


def _check_unit_interval(kind: str, name: str, field_name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{kind} {name!r}: {field_name} must be within 0..1, got {value}")


@dataclass(frozen=True, eq=False)
class Findings:
    """Everything one pipeline found in one volume."""

    algorithm: Algorithm
    segments: tuple[Segment, ...] = field(default=())
    detections: tuple[Detection, ...] = field(default=())
    classifications: tuple[Classification, ...] = field(default=())

    @property
    def is_empty(self) -> bool:
        """Nothing to report: no non-empty segment, no detection, no classification."""
        return not (
            self.detections
            or self.classifications
            or any(segment.mask.any() for segment in self.segments)
        )
