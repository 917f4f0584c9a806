"""Findings on the source planes in patient coordinates: traced outlines, nearest planes.

Every output that draws in the patient (RTSTRUCT contours, and whatever else places a
finding on the images the scanner produced) works on the source planes of a volume
(``Volume.planes``), never on the voxel grid: on a resampled volume (gantry tilt, uneven
gaps) slice k of the grid is not image k, and on a multi-frame source every plane is one
frame of the same instance. This module is the one way of doing that:

- ``plane_outlines(volume, mask)``: every boundary (island and hole) of a voxel mask on
  every source plane it covers, as closed polygons in patient LPS millimetres lying in that
  plane (``Volume.plane_masks`` takes the mask onto the planes first);
- ``nearest_plane(volume, point_mm)``: the index of the source plane nearest a point;
- ``plane_to_patient`` / ``patient_to_plane``: (row, col) pixel indices of one plane to
  patient millimetres and back, with the plane's own position, directions and spacing;
- ``trace_plane(mask2d)``: the outlines of a 2D mask as (row, col) polygons; filling them
  with the even-odd rule gives the mask back (``fill_polygons``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from skimage import measure

from pipelines.planes import Plane
from pipelines.volume import Volume


@dataclass(frozen=True, eq=False)
class PlaneOutline:
    """One closed outline on source plane ``index`` of a volume.

    ``points_mm`` are (n, 3) patient LPS millimetres in the plane (the first point is not
    repeated at the end); ``plane`` carries the image (and frame) it lies on.
    """

    index: int
    plane: Plane
    points_mm: npt.NDArray[np.float64]


def plane_to_patient(plane: Plane, rows_cols: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(n, 2) (row, col) pixel indices on ``plane`` -> (n, 3) patient LPS millimetres.

    The centre of pixel (r, c) is at ``position + r * spacing_rows * col_dir + c *
    spacing_cols * row_dir`` (PS3.3 C.7.6.2.1.1).
    """
    points = np.asarray(rows_cols, dtype=np.float64).reshape(-1, 2)
    row_spacing, col_spacing = (float(v) for v in plane.pixel_spacing)
    return (
        plane.position
        + np.outer(points[:, 0] * row_spacing, plane.col_dir)
        + np.outer(points[:, 1] * col_spacing, plane.row_dir)
    )


def patient_to_plane(
    plane: Plane, points_mm: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(n, 3) patient millimetres -> ((n, 2) (row, col) indices on ``plane``, distances).

    The points are projected onto the plane along its normal; ``distances`` are their
    signed distances from it (mm), so a caller can check they lie in it.
    """
    offsets = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3) - plane.position
    row_spacing, col_spacing = (float(v) for v in plane.pixel_spacing)
    rows_cols = np.column_stack(
        [offsets @ plane.col_dir / row_spacing, offsets @ plane.row_dir / col_spacing]
    )
    return rows_cols, offsets @ plane.normal


def nearest_plane(volume: Volume, point_mm: Sequence[float] | npt.NDArray[np.float64]) -> int:
    """Index in ``volume.planes`` of the source plane nearest ``point_mm`` along the normal.

    A point halfway between two planes takes the first (the lower index).
    """
    point = np.asarray(point_mm, dtype=np.float64)
    distances = [abs(float((point - plane.position) @ plane.normal)) for plane in volume.planes]
    return int(np.argmin(distances))


def trace_plane(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Every boundary of a 2D mask (islands and holes) as closed (row, col) polygons.

    scikit-image's ``find_contours`` traces the 0.5 iso-line (the boundary between inside
    and outside), padded so a mask touching the image border still closes; the points
    inside straight runs are dropped. The first point of each polygon is not repeated at
    its end; the even-odd fill of all of them is the mask (``fill_polygons``).
    """
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return []
    # Trace only the mask's bounding box (padded, so contours touching it close).
    top, left = int(rows[0]), int(cols[0])
    box = mask[top : int(rows[-1]) + 1, left : int(cols[-1]) + 1]
    padded = np.pad(box, 1).astype(np.float32)
    offset = np.array([top - 1.0, left - 1.0])
    polygons = []
    for contour in measure.find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
        outline = _without_straight_runs(contour[:-1] if _closed(contour) else contour)
        if len(outline) >= 3:
            polygons.append(outline + offset)
    return polygons


def plane_outlines(volume: Volume, mask: npt.NDArray[np.bool_]) -> Iterator[PlaneOutline]:
    """The outlines of a voxel mask on every source plane it covers, in plane order.

    The mask is taken onto the source planes (``Volume.plane_masks``: the planes
    themselves on a regular volume, resampled back onto the tilted or unevenly spaced
    images otherwise) and traced there, so every outline lies on an image the scanner
    produced and is placed with that image's own geometry.
    """
    on_planes = volume.plane_masks(mask)
    covered = np.flatnonzero(on_planes.reshape(len(on_planes), -1).any(axis=1))
    for k in covered:
        plane = volume.planes[int(k)]
        for polygon in trace_plane(on_planes[k]):
            yield PlaneOutline(int(k), plane, plane_to_patient(plane, polygon))


def fill_polygons(
    polygons: Sequence[npt.NDArray[np.float64]], shape: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """The pixels whose centres (row, col) lie inside an odd number of ``polygons``.

    A scanline fill of all the polygons' edges at once (the even-odd rule is the parity of
    the edges crossed, so several polygons fill as their exclusive or): each edge that
    spans a row of pixel centres (half-open, so a vertex on a row counts once) toggles the
    pixels right of its crossing, and the toggles are summed along the row. Its cost grows
    with the edges and rows, not with the pixels times the vertices as scikit-image's
    ``draw.polygon`` does (a body outline on a 512 x 512 image: about 100x faster).
    """
    rows, cols = shape
    if not polygons:
        return np.zeros(shape, dtype=np.bool_)
    starts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
    ends = np.concatenate(
        [np.roll(np.asarray(p, dtype=np.float64).reshape(-1, 2), -1, axis=0) for p in polygons]
    )
    low = np.minimum(starts[:, 0], ends[:, 0])
    high = np.maximum(starts[:, 0], ends[:, 0])
    first = np.clip(np.ceil(low), 0, rows).astype(np.int64)  # rows r with low <= r < high
    last = np.clip(np.ceil(high), 0, rows).astype(np.int64)
    counts = last - first
    keep = counts > 0
    if not keep.any():
        return np.zeros(shape, dtype=np.bool_)
    starts, ends, first, counts = starts[keep], ends[keep], first[keep], counts[keep]
    edge = np.repeat(np.arange(len(counts)), counts)
    row = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(counts) - counts, counts))
    (y0, x0), (y1, x1) = starts[edge].T, ends[edge].T
    x = x0 + (row - y0) * (x1 - x0) / (y1 - y0)
    column = np.clip(np.ceil(x), 0, cols).astype(np.int64)  # pixels c >= x are right of it
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    np.add.at(toggles, (row, column), 1)
    return (np.cumsum(toggles[:, :cols], axis=1) % 2).astype(np.bool_)


def _closed(contour: npt.NDArray[np.float64]) -> bool:
    return len(contour) > 1 and bool(np.allclose(contour[0], contour[-1]))


def _without_straight_runs(ring: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The closed polygon ``ring`` without the points inside straight runs (same shape).

    A traced pixel boundary has a point at every pixel edge; those between two collinear
    neighbours carry nothing and make up most of the points.
    """
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(cross) > 1e-9]
