"""Findings: what a pipeline says about a volume, independent of how it is written to DICOM."""

from __future__ import annotations

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


@dataclass(frozen=True, eq=False)
class Segment:
    """One segmented structure: a boolean mask over the volume's voxel grid."""

    label: str
    mask: npt.NDArray[np.bool_]
    category: Code
    property_type: Code

    def __post_init__(self) -> None:
        if self.mask.dtype != np.bool_:
            raise TypeError(f"Segment {self.label!r}: mask must be boolean, got {self.mask.dtype}")
        if not self.label:
            raise ValueError("Segment label must not be empty")


@dataclass(frozen=True, eq=False)
class Findings:
    """Everything one pipeline found in one volume."""

    algorithm: Algorithm
    segments: tuple[Segment, ...] = field(default=())
