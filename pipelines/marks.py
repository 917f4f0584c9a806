"""Where findings are marked on the source slices, for the writers that draw on images.

The GSPS (``pipelines.gsps``) draws these marks as vector graphics over the source images
and the secondary capture (``pipelines.sc``) burns them into copies of them; both take
them from here so the two always agree:
- a segment is outlined on every slice where it appears, every piece and every hole;
- a detection is an ellipse on every slice its box crosses: the cross-section of the
  ellipsoid inscribed in the box (a circle where the box is as wide as it is high), so
  the largest one lies on the slice nearest the detection's centre;
- the source series' display window, for the GSPS's VOI LUT and the capture's grey.
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
from pipelines.findings import Detection, Findings, Segment
from pipelines.measurements import round_to
from pipelines.seg import check_mask_shapes, non_empty_segments
from pipelines.volume import Volume

#: An ellipse is at least this many pixels across each half, so a tiny lesion still shows.
MIN_HALF_AXIS_PX = 1.5
#: Percentiles of the voxel values that bound the display window of a series without one.
FALLBACK_WINDOW_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class Ellipse:
    """A detection's mark on one slice: centre (column, row), half axes along the image's
    rows (``half_width``) and columns (``half_height``), in pixels."""

    slice_index: int
    centre: tuple[float, float]
    half_width: float
    half_height: float
    #: True on the slice nearest the detection's centre (where its label goes).
    is_centre_slice: bool

    @property
    def is_circle(self) -> bool:
        return math.isclose(self.half_width, self.half_height, rel_tol=1e-3)


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
    """The detection's ellipse on each slice its box crosses (at least the nearest one)."""
    centre = np.linalg.solve(volume.affine, np.append(np.asarray(detection.centre_mm), 1.0))
    k_centre, row, col = (float(v) for v in centre[:3])
    depth = volume.voxels.shape[0]
    nearest = int(np.clip(round(k_centre), 0, depth - 1))
    extent_mm = np.abs(
        np.asarray(detection.bbox_max_mm, dtype=np.float64)
        - np.asarray(detection.bbox_min_mm, dtype=np.float64)
    )
    slice_spacing, row_spacing, col_spacing = volume.spacing
    axes = volume.affine[:3, :3] / np.array([slice_spacing, row_spacing, col_spacing])
    half_depth_mm = float(np.abs(axes[:, 0]) @ extent_mm) / 2
    half_width = float(np.abs(axes[:, 2]) @ extent_mm) / 2 / col_spacing
    half_height = float(np.abs(axes[:, 1]) @ extent_mm) / 2 / row_spacing
    reach = math.floor(half_depth_mm / slice_spacing) + 1
    ellipses = []
    for k in range(max(0, nearest - reach), min(depth, nearest + reach + 1)):
        offset_mm = abs(k - k_centre) * slice_spacing
        if k != nearest and offset_mm > half_depth_mm:
            continue
        if offset_mm >= half_depth_mm:
            # only the nearest slice gets here: a box thinner than the slice gap, drawn
            # where the slice closest to it shows it
            scale = 1.0
        else:
            scale = math.sqrt(1.0 - (offset_mm / half_depth_mm) ** 2)
        ellipses.append(
            Ellipse(
                slice_index=k,
                centre=(col + 0.5, row + 0.5),
                half_width=max(half_width * scale, MIN_HALF_AXIS_PX),
                half_height=max(half_height * scale, MIN_HALF_AXIS_PX),
                is_centre_slice=k == nearest,
            )
        )
    return ellipses


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
    """(slice index, closed outlines) for each slice of ``mask`` with any voxel in it.

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
    center, width = image.get("WindowCenter"), image.get("WindowWidth")
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
