"""Where a finding is drawn: a 2D outline on the one source image where it shows best.

Viewers draw SR findings on an image (OHIF, 3D Slicer and the IHE AI Results profile expect
a 2D SCOORD that references the image it is drawn on), so each finding is reduced to its
key slice and an outline in that image's pixel coordinates. DICOM image coordinates are
(column, row) with the top-left corner of the image at (0, 0), so the centre of the pixel
at index (row r, column c) is (c + 0.5, r + 0.5) (PS3.3 C.18.6.1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from scipy import ndimage
from skimage import measure

from pipelines.findings import Detection
from pipelines.volume import Volume

#: An outline keeps at most this many points (evenly spaced along the traced boundary).
MAX_OUTLINE_POINTS = 256
#: A box is at least twice this wide and high, so a tiny lesion still shows a mark.
MIN_HALF_SIDE_PX = 1.5


@dataclass(frozen=True, eq=False)
class KeyImageRegion:
    """A 2D region on one source image: ``points`` are (column, row) image coordinates.

    ``frame`` is the image's 1-based frame number in a multi-frame instance (None for a
    single-frame image); ``slice_index`` is the source plane's index in ``volume.planes``.
    """

    image: Dataset
    slice_index: int
    graphic_type: str  # POLYLINE or POINT (DICOM Graphic Type)
    points: npt.NDArray[np.float32]
    frame: int | None = None


def detection_region(volume: Volume, detection: Detection) -> KeyImageRegion:
    """The detection's box on the source image through its centre, as a closed POLYLINE.

    A box detector's lesion is widest at its centre, so the source plane nearest to it is
    its key image. The rectangle's sides follow the image's rows and columns (what viewers
    draw without resampling, and what OHIF takes into its measurement list as a rectangle
    ROI); its width and height are the box's extent along those directions.
    """
    centre = np.asarray(detection.centre_mm, dtype=np.float64)
    k = nearest_plane(volume, centre)
    plane = volume.planes[k]
    row_spacing, col_spacing = (float(v) for v in plane.pixel_spacing)
    offset = centre - plane.position
    row, col = (
        float(offset @ plane.col_dir) / row_spacing,
        float(offset @ plane.row_dir) / col_spacing,
    )
    extent_mm = np.abs(
        np.asarray(detection.bbox_max_mm, dtype=np.float64)
        - np.asarray(detection.bbox_min_mm, dtype=np.float64)
    )
    half_width = max(float(np.abs(plane.row_dir) @ extent_mm) / 2 / col_spacing, MIN_HALF_SIDE_PX)
    half_height = max(float(np.abs(plane.col_dir) @ extent_mm) / 2 / row_spacing, MIN_HALF_SIDE_PX)
    x, y = col + 0.5, row + 0.5
    left, right, top, bottom = x - half_width, x + half_width, y - half_height, y + half_height
    points = np.array(
        [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)],
        dtype=np.float32,
    )
    return KeyImageRegion(plane.dataset, k, "POLYLINE", points, plane.frame)


def nearest_plane(volume: Volume, point_mm: npt.NDArray[np.float64]) -> int:
    """Index in ``volume.planes`` of the source plane nearest ``point_mm`` along its normal
    (the first of two at the same distance)."""
    normal = volume.planes[0].normal
    distances = [abs(float((point_mm - plane.position) @ normal)) for plane in volume.planes]
    return int(np.argmin(distances))


def segment_region(volume: Volume, mask: npt.NDArray[np.bool_]) -> KeyImageRegion:
    """The outline of a segment's largest piece on the source image where it is largest.

    The mask is taken onto the source planes first (``Volume.plane_masks``), so the outline
    is drawn on an image the scanner produced, in that image's pixel coordinates. Raises
    ``ValueError`` for an empty mask (there is nothing to outline).
    """
    on_planes = volume.plane_masks(mask)
    # count_nonzero per slice: ~7x faster than a bool sum along an axis (no int64 casts).
    areas = np.array([np.count_nonzero(plane) for plane in on_planes])
    if not areas.any():
        raise ValueError("cannot outline an empty segment")
    k = int(np.argmax(areas))
    image, frame = volume.planes[k].dataset, volume.planes[k].frame
    labels, count = ndimage.label(on_planes[k])
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    piece = labels == int(np.argmax(sizes)) + 1
    if int(piece.sum()) == 1:
        row, col = np.argwhere(piece)[0]
        point = np.array([[col + 0.5, row + 0.5]], dtype=np.float32)
        return KeyImageRegion(image, k, "POINT", point, frame)
    # Pad so a piece touching the image border still gives a closed contour.
    contours = measure.find_contours(np.pad(piece, 1).astype(np.float32), 0.5)  # type: ignore[no-untyped-call]
    outline = max(contours, key=len) - 1.0  # back to unpadded (row, col) indices
    if len(outline) > MAX_OUTLINE_POINTS:
        keep = np.linspace(0, len(outline) - 1, MAX_OUTLINE_POINTS).round().astype(int)
        outline = outline[keep]
    if not np.array_equal(outline[0], outline[-1]):
        outline = np.vstack([outline, outline[:1]])
    points = np.column_stack([outline[:, 1] + 0.5, outline[:, 0] + 0.5]).astype(np.float32)
    return KeyImageRegion(image, k, "POLYLINE", points, frame)
