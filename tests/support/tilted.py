"""Head-CT-like stacks as scanners send them: gantry tilt, uneven and missing slices.

A water cylinder (40 HU, the "head") along the table axis holds a dense sphere (700 HU)
of known centre and radius. Each slice is tilted about the patient's left-right axis by
the gantry angle, while its position moves along the table (z), so the stack is sheared
exactly as a tilted acquisition is. Voxel values are sampled at pixel centres in patient
space, so every geometry shows the same object.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from pipelines.uids import derive_uid
from tests.support.phantom import _slice_dataset

HEAD_RADIUS_MM = 58.0
HEAD_HU, SPHERE_HU, AIR = 40.0, 700.0, -1000.0


@dataclass(frozen=True)
class SphereStack:
    """The slices (in acquisition order) and the sphere they show."""

    datasets: list[Dataset]
    centre: npt.NDArray[np.float64]
    radius: float

    @property
    def sphere_volume_mm3(self) -> float:
        return 4.0 / 3.0 * math.pi * self.radius**3


def make_sphere_stack(
    *,
    tilt_degrees: float = 0.0,
    table_positions: Sequence[float] | None = None,
    size: int = 64,
    pixel_spacing: float = 2.0,
    centre: tuple[float, float, float] = (3.0, -4.0, 1.5),
    radius: float = 20.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> SphereStack:
    """Slices at ``table_positions`` (mm along z; default 40 slices 2.5 mm apart).

    With ``tilt_degrees`` the image plane's column direction is (0, cos, sin): a gantry
    tilted about the left-right axis, the slice origin still moving along the table.
    """
    if table_positions is None:
        table_positions = [-48.75 + 2.5 * k for k in range(40)]
    angle = math.radians(tilt_degrees)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, math.cos(angle), math.sin(angle)])
    iop = [*row_dir, *col_dir]
    half = (size - 1) / 2.0
    sphere = np.asarray(centre, dtype=np.float64)
    tag = f"tilt{tilt_degrees}-{','.join(f'{z:g}' for z in table_positions)}"
    study_uid = study_uid or derive_uid("tilted-study", tag)
    series_uid = series_uid or derive_uid("tilted-series", tag)
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    datasets = []
    for number, z in enumerate(table_positions, start=1):
        position = np.array([0.0, 0.0, z]) - half * pixel_spacing * (row_dir + col_dir)
        points = (
            position
            + r[..., None] * pixel_spacing * col_dir
            + c[..., None] * pixel_spacing * row_dir
        )
        hu = np.full((size, size), AIR, dtype=np.float32)
        hu[np.hypot(points[..., 0], points[..., 1]) <= HEAD_RADIUS_MM] = HEAD_HU
        hu[np.linalg.norm(points - sphere, axis=-1) <= radius] = SPHERE_HU
        stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
        ds = _slice_dataset(
            stored,
            position,
            iop,
            pixel_spacing,
            2.5,
            study_uid,
            series_uid,
            number,
            sop_uid=derive_uid(series_uid, str(number)),
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.GantryDetectorTilt = tilt_degrees
        ds.BodyPartExamined = "HEAD"
        ds.SeriesDescription = "Head tilted"
        datasets.append(ds)
    return SphereStack(datasets=datasets, centre=sphere, radius=radius)


@dataclass(frozen=True)
class SegSphere:
    """What a SEG segment says about a solid: its volume and centre in patient mm."""

    volume_mm3: float
    centre: npt.NDArray[np.float64]
    frame_positions: list[npt.NDArray[np.float64]]


def seg_sphere(seg: Dataset, segment_number: int, sources: Sequence[Dataset]) -> SegSphere:
    """Volume and centroid of one segment, from the SEG frames and the source slices.

    Each frame counts with the slab of its source slice: half the distance (along the
    normal) to each neighbouring source slice, so uneven spacing is measured as it is.
    """
    iop = np.array([float(v) for v in sources[0].ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    depths = sorted(
        float(np.array(ds.ImagePositionPatient, dtype=float) @ normal) for ds in sources
    )
    edges = [depths[0] - (depths[1] - depths[0]) / 2]
    edges += [(a + b) / 2 for a, b in itertools.pairwise(depths)]
    edges.append(depths[-1] + (depths[-1] - depths[-2]) / 2)
    slab = {round(d, 3): edges[i + 1] - edges[i] for i, d in enumerate(depths)}
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    total, moment, positions = 0.0, np.zeros(3), []
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        number = int(identification[0].ReferencedSegmentNumber)
        if number != segment_number:
            continue
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        positions.append(position)
        rows, cols = np.nonzero(pixels[index])
        weight = slab[round(float(position @ normal), 3)] * spacing[0] * spacing[1]
        points = (
            position + np.outer(rows * spacing[0], col_dir) + np.outer(cols * spacing[1], row_dir)
        )
        total += weight * len(rows)
        moment += weight * points.sum(axis=0)
    return SegSphere(volume_mm3=total, centre=moment / total, frame_positions=positions)
