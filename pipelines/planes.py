"""Series -> source planes: every image of a series with its geometry, split into stacks.

A plane is one 2D image the scanner produced: a single-frame instance, or one frame of an
enhanced or legacy-converted multi-frame instance (geometry from its per-frame or shared
functional groups). Planes are split into the stacks a volume can be built from: one per
multi-frame instance and value of its non-spatial dimension indices (stack, temporal
position, b-value, ...), and for single-frame series one per acquisition when positions
repeat. Localizers are set apart. Nothing is averaged: what cannot be separated is refused
with a ``VolumeError`` that names the instances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pipelines.errors import VolumeError

#: Builds a VolumeError whose message names the series.
_Fail = Callable[[str], VolumeError]

#: Two orientation vectors are "the same" when no component differs by more than this.
ORIENTATION_TOLERANCE = 1e-3
#: Two planes closer than this along the slice normal (mm) are at the same position.
SAME_POSITION_MM = 1e-3

#: Dimension index pointers that order frames in space (not a reason to split). A legacy
#: converted instance of a tilted or unevenly spaced series is ordered by the Instance
#: Number of the images it was made from (highdicom's converter does so).
_SPATIAL_DIMENSIONS = frozenset(
    int(Tag(keyword))
    for keyword in (
        "ImagePositionPatient",
        "InStackPositionNumber",
        "SliceLocation",
        "InstanceNumber",
    )
)
#: Readable names of the dimensions a multi-frame image is most often split by.
_DIMENSION_NAMES = {
    "StackID": "stack",
    "TemporalPositionIndex": "temporal position",
    "DiffusionBValue": "b-value",
    "DiffusionGradientOrientation": "diffusion direction",
    "EffectiveEchoTime": "echo time",
}
#: Attributes that tell the acquisitions of a single-frame series apart, tried in order
#: when slice positions repeat (several phases or acquisitions in one series).
_ACQUISITION_ATTRIBUTES = (
    ("TemporalPositionIdentifier", "temporal position"),
    ("AcquisitionNumber", "acquisition"),
    ("EchoNumbers", "echo"),
    ("DiffusionBValue", "b-value"),
    ("TriggerTime", "trigger time"),
    ("AcquisitionTime", "acquisition time"),
)


@dataclass(frozen=True, eq=False)
class Plane:
    """One source image: ``frame`` is its 1-based number in a multi-frame instance, else None.

    ``row_dir`` and ``col_dir`` are ImageOrientationPatient's unit vectors (the directions
    of increasing column and row), ``pixel_spacing`` is (between rows, between columns).
    """

    dataset: Dataset
    frame: int | None
    position: npt.NDArray[np.float64]
    row_dir: npt.NDArray[np.float64]
    col_dir: npt.NDArray[np.float64]
    pixel_spacing: npt.NDArray[np.float64]
    rows: int
    cols: int
    #: (name, value) of the dimensions that set this plane's stack apart from others.
    group: tuple[tuple[str, str], ...] = field(default=())

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = np.cross(self.row_dir, self.col_dir)
        return result

    def describe(self) -> str:
        """The instance (and frame) for a message: UIDs only, never patient data."""
        sop = str(self.dataset.get("SOPInstanceUID", "<no SOPInstanceUID>"))
        return sop if self.frame is None else f"{sop} frame {self.frame}"


@dataclass(frozen=True)
class Stack:
    """Planes that form one volume; ``label`` says which part of the series it is."""

    planes: tuple[Plane, ...]
    label: str


@dataclass(frozen=True)
class SeriesStacks:
    """The stacks of a series, and what was set apart (with the reason), e.g. localizers."""

    stacks: tuple[Stack, ...]
    set_apart: tuple[str, ...]


def series_stacks(datasets: Sequence[Dataset]) -> SeriesStacks:
    """Read the planes of one series and split them into stacks. Raises ``VolumeError``."""
    if not datasets:
        raise VolumeError("cannot build a volume from an empty series (no instances)")
    series_uid = str(datasets[0].get("SeriesInstanceUID", "<missing>"))

    def fail(problem: str) -> VolumeError:
        return VolumeError(f"series {series_uid}: {problem}")

    images: list[Dataset] = []
    localizers: list[Dataset] = []
    for ds in datasets:
        uid = str(ds.get("SeriesInstanceUID", "<missing>"))
        if uid != series_uid:
            raise fail(f"instance {_sop(ds)} belongs to another series ({uid})")
        (localizers if _is_localizer(ds) else images).append(ds)
    set_apart = []
    if localizers:
        set_apart.append(
            f"{len(localizers)} localizer image(s) left out (ImageType LOCALIZER): "
            + ", ".join(_sop(ds) for ds in localizers[:3])
            + (" ..." if len(localizers) > 3 else "")
        )
    if not images:
        raise fail("the series holds only localizer images (ImageType LOCALIZER)")

    # Multi-frame planes by (instance, stack within it); single-frame planes together.
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Plane]] = {}
    single: list[Plane] = []
    for ds in images:
        if _frame_count(ds) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            for plane in multiframe_planes(ds, fail):
                groups.setdefault((_sop(ds), plane.group), []).append(plane)
        else:
            single.append(single_frame_plane(ds, fail))
    stacks: list[Stack] = []
    if single:
        stacks.extend(_split_acquisitions(single, fail))
    parts_per_instance: dict[str, int] = {}
    for sop, _ in groups:
        parts_per_instance[sop] = parts_per_instance.get(sop, 0) + 1
    for (sop, key), planes in groups.items():
        check_same_orientation(planes, fail)
        # Name the stack only when its instance has several ("stack 2", "b-value 1000").
        label = ", ".join(f"{name} {value}" for name, value in key)
        label = label if parts_per_instance[sop] > 1 else ""
        if len(parts_per_instance) > 1 or single:
            label = f"instance {sop}" + (f", {label}" if label else "")
        stacks.append(Stack(tuple(planes), label))
    return SeriesStacks(stacks=tuple(stacks), set_apart=tuple(set_apart))


def single_frame_plane(ds: Dataset, fail: _Fail) -> Plane:
    """The plane of a single-frame instance, checked for what a volume needs."""
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "Rows",
        "Columns",
    ):
        if ds.get(keyword) in (None, ""):
            raise fail(f"instance {_sop(ds)} has no {keyword}")
    _check_pixels(ds, fail)
    row_dir, col_dir = _orientation(ds.ImageOrientationPatient, _sop(ds), fail)
    return Plane(
        dataset=ds,
        frame=None,
        position=_vector(ds.ImagePositionPatient, 3, "ImagePositionPatient", _sop(ds), fail),
        row_dir=row_dir,
        col_dir=col_dir,
        pixel_spacing=_spacing(ds.PixelSpacing, _sop(ds), fail),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
    )


def multiframe_planes(ds: Dataset, fail: _Fail) -> list[Plane]:
    """One plane per frame, from the per-frame functional groups (else the shared ones)."""
    _check_pixels(ds, fail)
    frames = _frame_count(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if len(per_frame) != frames:
        raise fail(
            f"multi-frame instance {_sop(ds)} has {len(per_frame)} per-frame functional "
            f"group item(s) for {frames} frame(s)"
        )
    dimensions = _split_dimensions(ds)
    planes = []
    for number, item in enumerate(per_frame, start=1):
        where = f"{_sop(ds)} frame {number}"
        position = _functional(item, shared, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(
            item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        spacing = _functional(item, shared, "PixelMeasuresSequence", "PixelSpacing")
        for keyword, value in (
            ("ImagePositionPatient", position),
            ("ImageOrientationPatient", orientation),
            ("PixelSpacing", spacing),
        ):
            if value in (None, ""):
                raise fail(f"instance {where} has no {keyword} in its functional groups")
        row_dir, col_dir = _orientation(orientation, where, fail)
        planes.append(
            Plane(
                dataset=ds,
                frame=number,
                position=_vector(position, 3, "ImagePositionPatient", where, fail),
                row_dir=row_dir,
                col_dir=col_dir,
                pixel_spacing=_spacing(spacing, where, fail),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                group=_frame_group(item, dimensions),
            )
        )
    return planes


def check_same_orientation(planes: Sequence[Plane], fail: _Fail) -> None:
    """Every plane of a stack has the first one's orientation, size and pixel spacing."""
    first = planes[0]
    for plane in planes[1:]:
        if (
            np.abs(plane.row_dir - first.row_dir).max() > ORIENTATION_TOLERANCE
            or np.abs(plane.col_dir - first.col_dir).max() > ORIENTATION_TOLERANCE
        ):
            raise fail(
                "mixed ImageOrientationPatient: "
                f"{_fmt(np.concatenate([first.row_dir, first.col_dir]))} in "
                f"{first.describe()} but "
                f"{_fmt(np.concatenate([plane.row_dir, plane.col_dir]))} in {plane.describe()}"
            )
        if (plane.rows, plane.cols) != (first.rows, first.cols):
            raise fail(
                f"image size differs: {first.rows}x{first.cols} in {first.describe()} but "
                f"{plane.rows}x{plane.cols} in {plane.describe()}"
            )
        tolerance = 0.01 * float(first.pixel_spacing.min())
        if np.abs(plane.pixel_spacing - first.pixel_spacing).max() > tolerance:
            raise fail(
                f"PixelSpacing differs: {_fmt(first.pixel_spacing)} in {first.describe()} "
                f"but {_fmt(plane.pixel_spacing)} in {plane.describe()}"
            )


def repeated_positions(planes: Sequence[Plane]) -> tuple[Plane, Plane] | None:
    """Two planes of the same orientation at the same place along the normal, if any."""
    normal = planes[0].normal
    depth = np.array([plane.position @ normal for plane in planes])
    order = np.argsort(depth, kind="stable")
    close = np.flatnonzero(np.diff(depth[order]) < SAME_POSITION_MM)
    if not close.size:
        return None
    i = int(close[0])
    return planes[int(order[i])], planes[int(order[i + 1])]


def _split_acquisitions(planes: list[Plane], fail: _Fail) -> list[Stack]:
    """Single-frame planes as one stack, or one per acquisition when positions repeat."""
    check_same_orientation(planes, fail)
    repeated = repeated_positions(planes)
    if repeated is None:
        return [Stack(tuple(planes), "")]
    for keyword, name in _ACQUISITION_ATTRIBUTES:
        values = [str(plane.dataset.get(keyword, "")) for plane in planes]
        if len(set(values)) < 2:
            continue
        parts: dict[str, list[Plane]] = {}
        for value, plane in zip(values, planes, strict=True):
            parts.setdefault(value, []).append(plane)
        if all(repeated_positions(part) is None for part in parts.values()):
            return [
                Stack(tuple(part), f"{name} {value or '(none)'}")
                for value, part in sorted(parts.items(), key=lambda item: _natural(item[0]))
            ]
    first, second = repeated
    raise fail(
        f"duplicate slice position {_fmt(first.position)} in instances {first.describe()} "
        f"and {second.describe()}: the series holds several images at one place that no "
        "acquisition attribute (temporal position, acquisition number, echo, b-value, "
        "trigger or acquisition time) tells apart; they are not averaged"
    )


def _split_dimensions(ds: Dataset) -> list[tuple[int, str]]:
    """(position in DimensionIndexValues, name) of the dimensions that split into stacks."""
    found = []
    for index, item in enumerate(ds.get("DimensionIndexSequence") or []):
        pointer = int(item.get("DimensionIndexPointer", 0) or 0)
        if not pointer or pointer in _SPATIAL_DIMENSIONS:
            continue
        keyword = keyword_for_tag(pointer) or f"{pointer:08X}"
        found.append((index, _DIMENSION_NAMES.get(keyword, keyword)))
    return found


def _frame_group(item: Dataset, dimensions: list[tuple[int, str]]) -> tuple[tuple[str, str], ...]:
    """The stack of one frame: its non-spatial dimension index values (or StackID etc.)."""
    content = (item.get("FrameContentSequence") or [Dataset()])[0]
    values = content.get("DimensionIndexValues")
    if dimensions and values is not None:
        indices = [values] if isinstance(values, int) else list(values)
        return tuple(
            (name, str(indices[index])) for index, name in dimensions if index < len(indices)
        )
    # No dimension index: the frame content and diffusion attributes still say it.
    group = []
    if content.get("StackID") not in (None, ""):
        group.append(("stack", str(content.StackID)))
    if content.get("TemporalPositionIndex") not in (None, ""):
        group.append(("temporal position", str(content.TemporalPositionIndex)))
    diffusion = (item.get("MRDiffusionSequence") or [Dataset()])[0]
    if diffusion.get("DiffusionBValue") not in (None, ""):
        group.append(("b-value", f"{float(diffusion.DiffusionBValue):g}"))
    return tuple(group)


def _functional(item: Dataset, shared: Dataset, sequence: str, keyword: str) -> object:
    """``keyword`` from the frame's functional group ``sequence``, else from the shared one."""
    for source in (item, shared):
        group = source.get(sequence)
        if group and keyword in group[0]:
            return group[0][keyword].value
    return None


def _check_pixels(ds: Dataset, fail: _Fail) -> None:
    for keyword in ("Rows", "Columns"):
        if ds.get(keyword) in (None, ""):
            raise fail(f"instance {_sop(ds)} has no {keyword}")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise fail(f"instance {_sop(ds)} has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise fail(f"instance {_sop(ds)} is not a grayscale image (SamplesPerPixel != 1)")


def _is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(value).upper() == "LOCALIZER" for value in values[2:])


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _orientation(
    values: object, where: str, fail: _Fail
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    iop = _vector(values, 6, "ImageOrientationPatient", where, fail)
    row_dir, col_dir = iop[:3], iop[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if min(norms) < 1e-6:
        raise fail(f"instance {where}: ImageOrientationPatient has a zero vector")
    row_dir, col_dir = row_dir / norms[0], col_dir / norms[1]
    if abs(float(row_dir @ col_dir)) > ORIENTATION_TOLERANCE * 10:
        raise fail(f"instance {where}: ImageOrientationPatient vectors are not orthogonal")
    return row_dir, col_dir


def _spacing(values: object, where: str, fail: _Fail) -> npt.NDArray[np.float64]:
    spacing = _vector(values, 2, "PixelSpacing", where, fail)
    if spacing.min() <= 0:
        raise fail(f"instance {where}: invalid PixelSpacing {list(spacing)}")
    return spacing


def _vector(
    values: object, size: int, keyword: str, where: str, fail: _Fail
) -> npt.NDArray[np.float64]:
    try:
        items = [values] if isinstance(values, int | float | str) else list(values)  # type: ignore[call-overload]
        vector = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise fail(f"instance {where}: {keyword} is not numeric ({exc})") from exc
    if vector.shape != (size,) or not np.isfinite(vector).all():
        raise fail(f"instance {where}: {keyword} needs {size} numbers")
    return vector


def _natural(value: str) -> tuple[float, str]:
    try:
        return float(value), value
    except ValueError:
        return float("inf"), value


def _sop(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))


def _fmt(values: npt.NDArray[np.float64]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in np.round(values, 4)) + "]"
