"""Where findings are marked on the source images, for the writers that draw on images.

The GSPS (``pipelines.gsps``) draws these marks as vector graphics over the source images
and the secondary capture (``pipelines.sc``) burns them into copies of them; both take
them from here so the two always agree. Marks are on the source planes
(``Volume.planes``: single-frame images or frames of a multi-frame one), never on the
slices of a resampled grid, each in its own plane's pixel coordinates and geometry:
- a segment is outlined on every plane where it appears (``Volume.plane_masks``, the
  same masks as the SEG's frames), every piece and every hole;
- a detection is an ellipse on every plane its box crosses: the cross-section of the
  ellipsoid inscribed in the box (a circle where the box is as wide as it is high), so
  the largest one lies on the plane nearest the detection's centre
  (``pipelines.contours.nearest_plane``, the SR's key image);
- the source's display window (per frame for a multi-frame image), for the GSPS's VOI
  LUT and the capture's grey.
Image coordinates are DICOM's (column, row), the top-left corner of the image at (0, 0)
and the centre of the pixel at index (row r, column c) at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from skimage import measure

from pipelines.colors import RGB, segment_rgb
from pipelines.contours import nearest_plane
from pipelines.findings import Detection, Findings, Segment
from pipelines.measurements import round_to
from pipelines.planes import Plane
from pipelines.seg import check_mask_shapes, non_empty_segments
from pipelines.volume import Volume

#: An ellipse is at least this many pixels across each half, so a tiny lesion still shows.
MIN_HALF_AXIS_PX = 1.5
#: Thickness (mm, half) given to a box that is flat along an axis, so it has an ellipsoid.
_FLAT_MM = 1e-3
#: Percentiles of the voxel values that bound the display window of a series without one.
FALLBACK_WINDOW_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Ellipse:
    """A detection's mark on one source plane (``slice_index`` into ``Volume.planes``):
    centre and the two half axes (major first), as (column, row) vectors in pixels."""

    slice_index: int
    centre: tuple[float, float]
    major: tuple[float, float]
    minor: tuple[float, float]
    #: True on the plane nearest the detection's centre (where its label goes).
    is_centre_slice: bool

    @property
    def is_circle(self) -> bool:
        return math.isclose(math.hypot(*self.major), math.hypot(*self.minor), rel_tol=1e-3)

    @property
    def half_width(self) -> float:
        """Half the width of the box around the ellipse, in pixels."""
        return math.hypot(self.major[0], self.minor[0])

    @property
    def half_height(self) -> float:
        """Half the height of the box around the ellipse, in pixels."""
        return math.hypot(self.major[1], self.minor[1])

    def outline(self, count: int = 72) -> npt.NDArray[np.float64]:
        """``count`` points (column, row) around the ellipse, the first repeated last."""
        angles = np.linspace(0.0, 2 * math.pi, count + 1)
        points: npt.NDArray[np.float64] = (
            np.asarray(self.centre, dtype=np.float64)
            + np.cos(angles)[:, None] * np.asarray(self.major)
            + np.sin(angles)[:, None] * np.asarray(self.minor)
        )
        points[-1] = points[0]
        return points


@dataclass(frozen=True)
class Window:
    """A display window (VOI LUT by centre and width, PS3.3 C.11.2.1.2), in modality units."""

    center: float
    width: float

    def to_unit(self, values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Values mapped to 0..1 by DICOM's LINEAR window function."""
        scaled = (values - (self.center - 0.5)) / max(self.width - 1.0, 1e-6) + 0.5
        unit: npt.NDArray[np.float32] = np.clip(scaled, 0.0, 1.0).astype(np.float32)
        return unit


@dataclass(frozen=True, eq=False)
class Layers:
    """What is drawn, grouped as viewers show it, and the colour of each group: the
    non-empty segments (the SEG's segments, in its colours), then the detections' finding
    types (each in a colour apart from those of the segments). ``rgb`` holds one sRGB
    colour per group, segments first."""

    segments: tuple[Segment, ...]
    finding_types: tuple[Code, ...]
    rgb: tuple[RGB, ...]

    def lab(self, index: int) -> hd.color.CIELabColor:
        """The CIELab colour of group ``index`` (what a DICOM object states)."""
        return hd.color.CIELabColor.from_rgb(*self.rgb[index])

    @property
    def segment_rgb(self) -> tuple[RGB, ...]:
        return self.rgb[: len(self.segments)]

    @property
    def finding_type_rgb(self) -> tuple[RGB, ...]:
        return self.rgb[len(self.segments) :]

    def detection_rgb(self, detection: Detection) -> RGB:
        keys = [finding_key(code) for code in self.finding_types]
        return self.finding_type_rgb[keys.index(finding_key(detection.finding_type))]


def has_marks(findings: Findings) -> bool:
    """Whether there is anything to draw: a non-empty segment or a detection."""
    return bool(findings.detections) or bool(non_empty_segments(findings))


class NothingToDrawError(ValueError):
    """No non-empty segment and no detection: a drawing of the findings would be empty."""


def overlay_layers(volume: Volume, findings: Findings) -> Layers:
    """The segments and finding types of ``findings`` that are drawn, with their colours.

    Raises ``NothingToDrawError`` when there is nothing to draw, and ``ValueError`` when a
    mask does not fit the volume.
    """
    check_mask_shapes(volume, findings)
    if not has_marks(findings):
        raise NothingToDrawError(
            f"{findings.algorithm.name} found no segment and no detection in series "
            f"{volume.series_uid}: there is nothing to draw"
        )
    segments = non_empty_segments(findings)
    types: dict[tuple[str, str], Code] = {}
    for detection in findings.detections:
        types.setdefault(finding_key(detection.finding_type), detection.finding_type)
    rgb = segment_rgb(
        [(segment.color, segment.property_type) for segment in segments]
        + [(None, code) for code in types.values()]
    )
    return Layers(segments, tuple(types.values()), tuple(rgb))


def finding_key(code: Code) -> tuple[str, str]:
    return (str(code.value), str(code.scheme_designator))


def detection_ellipses(volume: Volume, detection: Detection) -> list[Ellipse]:
    """The detection's ellipse on each source plane its box crosses (at least the nearest).

    The mark is where the plane cuts the ellipsoid inscribed in the box (its axes along the
    patient's), worked out in each plane's own position, orientation and pixel spacing: a
    tilted or unevenly spaced stack gets its marks where the box is, not where a resampled
    slice would put them, and a tilted plane through a sphere still shows a circle. The
    nearest plane shows the section through the centre when it misses the ellipsoid (a
    box thinner than the gap between planes).
    """
    centre_mm = np.asarray(detection.centre_mm, dtype=np.float64)
    nearest = nearest_plane(volume, centre_mm)
    half_mm = (
        np.abs(
            np.asarray(detection.bbox_max_mm, dtype=np.float64)
            - np.asarray(detection.bbox_min_mm, dtype=np.float64)
        )
        / 2
    )
    # (x - c)^T D (x - c) <= 1 inside the ellipsoid; flat boxes get a hair of thickness.
    inverse_squares = np.diag(1.0 / np.maximum(half_mm, _FLAT_MM) ** 2)
    ellipses = []
    for k, plane in enumerate(volume.planes):
        section = _section(plane, centre_mm, inverse_squares, through_centre=False)
        if section is None and k == nearest:
            section = _section(plane, centre_mm, inverse_squares, through_centre=True)
        if section is None:
            continue
        centre, major, minor = section
        ellipses.append(
            Ellipse(
                slice_index=k,
                centre=(float(centre[0]), float(centre[1])),
                major=(float(major[0]), float(major[1])),
                minor=(float(minor[0]), float(minor[1])),
                is_centre_slice=k == nearest,
            )
        )
    return ellipses


def _section(
    plane: Plane,
    centre_mm: npt.NDArray[np.float64],
    inverse_squares: npt.NDArray[np.float64],
    *,
    through_centre: bool,
) -> tuple[npt.NDArray[np.float64], ...] | None:
    """(centre, major, minor half axis) in image coordinates of the ellipse where ``plane``
    (or, ``through_centre``, the parallel plane through the centre) cuts the ellipsoid;
    None when it misses it."""
    row_spacing, col_spacing = (float(v) for v in plane.pixel_spacing)
    # x = origin + U p: p = (column, row) pixel offsets from the ellipsoid's centre's foot
    along = 0.0 if through_centre else float((centre_mm - plane.position) @ plane.normal)
    foot = centre_mm - along * plane.normal
    units = np.column_stack([plane.row_dir * col_spacing, plane.col_dir * row_spacing])
    to_centre = foot - centre_mm
    quadratic = units.T @ inverse_squares @ units
    linear = units.T @ inverse_squares @ to_centre
    shift = -np.linalg.solve(quadratic, linear)
    room = 1.0 - float(to_centre @ inverse_squares @ to_centre) + float(linear @ -shift)
    if room <= 0.0:
        return None
    values, vectors = np.linalg.eigh(quadratic / room)  # ascending: major axis first
    lengths = np.maximum(1.0 / np.sqrt(values), MIN_HALF_AXIS_PX)
    offset = foot - plane.position
    centre = (
        np.array(
            [
                float(offset @ plane.row_dir) / col_spacing + 0.5,
                float(offset @ plane.col_dir) / row_spacing + 0.5,
            ]
        )
        + shift
    )
    return centre, vectors[:, 0] * lengths[0], vectors[:, 1] * lengths[1]


def detection_caption(detection: Detection, volume: Volume) -> str:
    """A short label: the finding (the detection's own label names it) and its size."""
    meaning = detection.finding_type.meaning
    name = detection.label
    if meaning.lower() not in name.lower():
        name = f"{meaning} {name}"
    size = round_to(detection.longest_diameter_mm, min(volume.spacing))
    return f"{name} {size:g} mm"


def segment_outlines(
    mask: npt.NDArray[np.bool_],
) -> Iterator[tuple[int, list[npt.NDArray[np.float64]]]]:
    """(plane index, closed outlines) for each plane of ``mask`` with any pixel in it.

    ``mask`` holds one 2D mask per source plane (``Volume.plane_masks``), so the outlines
    are in each source image's own pixel coordinates.

    Each outline is an (N, 2) array of (column, row) image coordinates, first point equal
    to the last: the boundary between the pixels inside and outside, as marching squares
    traces it, so every piece and every hole has its own outline.
    """
    for k, plane in enumerate(mask):
        if not plane.any():
            continue
        rows = np.flatnonzero(plane.any(axis=1))
        cols = np.flatnonzero(plane.any(axis=0))
        r0, c0 = int(rows[0]), int(cols[0])
        crop = plane[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
        # Pad so a piece touching the crop's (or the image's) border is closed.
        padded = np.pad(crop, 1).astype(np.float32)
        outlines = []
        for contour in measure.find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
            simple = _corners(contour)
            # padded index -> source index (-1 + offset) -> image coordinates (+0.5)
            outlines.append(np.column_stack([simple[:, 1] + c0 - 0.5, simple[:, 0] + r0 - 0.5]))
        yield k, outlines


def copy_body_part(source: Dataset, target: Dataset) -> None:
    """The source's body part and laterality, on an object of the same series' images.

    dciodvfy requires (General Series) Laterality of an object that states no body part,
    and refuses it empty unless the laterality is unknown: copied when the source states
    one, else the body part (or, lacking both, an empty, "unknown", laterality).
    """
    for keyword in ("BodyPartExamined", "Laterality"):
        if source.get(keyword):
            setattr(target, keyword, source.get(keyword))
    if "Laterality" not in target and "BodyPartExamined" not in target:
        target.Laterality = ""


def _corners(contour: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The closed contour with only the points where it turns: the same line, exactly.

    Marching squares over a binary mask steps half a pixel at a time, mostly straight on.
    """
    if not np.array_equal(contour[0], contour[-1]):
        contour = np.vstack([contour, contour[:1]])
    ring = contour[:-1]
    if len(ring) < 3:
        return contour
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    turns = ring[np.abs(cross) > 1e-9]
    if len(turns) < 2:
        return contour
    return np.vstack([turns, turns[:1]])


def source_window(image: Dataset) -> Window | None:
    """The first window (centre, width) the source image states, or None."""
    return _first_window(image)


def plane_window(plane: Plane) -> Window | None:
    """The window of one source plane: a frame's Frame VOI LUT (its own functional group,
    else the shared one), else the image's, or None."""
    if plane.frame is not None:
        ds = plane.dataset
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        shared = ds.get("SharedFunctionalGroupsSequence") or []
        groups = [per_frame[plane.frame - 1]] if plane.frame <= len(per_frame) else []
        for group in [*groups, *shared]:
            voi = group.get("FrameVOILUTSequence")
            if voi and (window := _first_window(voi[0])) is not None:
                return window
    return _first_window(plane.dataset)


def _first_window(item: Dataset) -> Window | None:
    center, width = item.get("WindowCenter"), item.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    first_center = float(center[0] if isinstance(center, MultiValue) else center)
    first_width = float(width[0] if isinstance(width, MultiValue) else width)
    return Window(first_center, first_width) if first_width >= 1 else None


def fallback_window(volume: Volume) -> Window:
    """A window over the series' own values, for a series that states none."""
    sample = volume.voxels[:: max(1, volume.voxels.shape[0] // 16)]
    low, high = np.percentile(sample, FALLBACK_WINDOW_PERCENTILES)
    width = max(float(high - low), 1.0)
    return Window(center=float(low) + width / 2, width=width)
