"""Series -> volumes: the regular 3D grids the pipelines run on, and the way back.

A series is read into source planes and split into stacks (``pipelines/planes.py``); each
stack becomes one ``Volume``. A regular stack is the grid itself; a sheared (gantry tilt)
or unevenly spaced one is resampled to a regular grid (``pipelines/resample.py``), and
``Volume.plane_masks`` maps a result back onto every source plane, so SEG frames and SR
outlines always lie on images the scanner produced. A pipeline never guesses at geometry:
what cannot form a volume is refused with a ``VolumeError`` that says which images are
wrong and why, so a failed job tells the admin what to fix.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut

from pipelines.errors import VolumeError
from pipelines.planes import Plane, Stack, repeated_positions, series_stacks
from pipelines.resample import Grid, plan_grid, to_grid, to_planes

logger = logging.getLogger(__name__)

#: Builds a VolumeError whose message names the series (and the stack).
_Fail = Callable[[str], VolumeError]

#: Exceptions a damaged or unsupported pixel encoding raises while decoding.
_DECODE_ERRORS = (
    ValueError,
    RuntimeError,
    NotImplementedError,
    AttributeError,
    TypeError,
    KeyError,
)


@dataclass(frozen=True, eq=False)
class Volume:
    """A regular 3D image: voxels indexed (slice, row, col) plus their place in the patient.

    ``affine`` maps (slice k, row r, col c, 1) to patient LPS millimetres; ``datasets`` are
    the source instances in plane order (without any guarantee their pixel data is kept).
    ``planes`` are the source images sorted along the slice normal; when left out they are
    the datasets, one per slice. ``grid`` says how the planes lie in the voxels (None: slice
    k is plane k); ``label`` names the part of a series this volume is ("stack 2").
    """

    voxels: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    datasets: tuple[Dataset, ...]
    planes: tuple[Plane, ...] = ()
    grid: Grid | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.planes:
            object.__setattr__(self, "planes", _planes_from_affine(self))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slice, row, col)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", ""))

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def resampled(self) -> bool:
        """True when the voxels are interpolated from the planes (tilt, uneven gaps)."""
        return self.grid is not None and not self.grid.regular

    @property
    def multiframe_source(self) -> Dataset | None:
        """The multi-frame instance whose frames the planes are, None for single frames."""
        return self.planes[0].dataset if self.planes[0].frame is not None else None

    @property
    def note(self) -> str:
        """What an admin should know about how this volume was made ("" when nothing)."""
        parts = [self.label] if self.label else []
        if self.grid is not None and self.grid.note:
            parts.append(self.grid.note)
        return "; ".join(parts)

    def plane_masks(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """A (slice, row, col) mask on the voxels -> one mask per source plane, in order."""
        if mask.shape != self.voxels.shape:
            raise ValueError(
                f"mask shape {mask.shape} does not match the volume {self.voxels.shape}"
            )
        if self.grid is None or self.grid.regular:
            return mask
        first = self.planes[0]
        return to_planes(mask, self.grid, first.rows, first.cols)

    def plane_pixels(self, indices: Sequence[int]) -> list[npt.NDArray[np.float32]]:
        """The values (after the modality transform) of the source planes ``indices``.

        The voxels' own slices when the grid is the planes; else each plane decoded again
        from its instance (or frame), as the scanner produced it, not the interpolation.
        Raises ``VolumeError`` when the pixel data was not kept or cannot be decoded.
        """
        if self.grid is None or self.grid.regular:
            return [self.voxels[k] for k in indices]

        def fail(problem: str) -> VolumeError:
            return VolumeError(f"series {self.series_uid}: {problem}")

        planes = [self.planes[k] for k in indices]
        for plane in planes:
            if "PixelData" not in plane.dataset and "FloatPixelData" not in plane.dataset:
                raise fail(f"the pixel data of instance {plane.describe()} was not kept")
        return _plane_pixels(planes, fail)


@dataclass(frozen=True)
class UnreadableFile:
    """A file that could not be read as a DICOM instance, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ScanResult:
    """Readable instances grouped by SeriesInstanceUID, plus every file that was not."""

    series: dict[str, list[Dataset]]
    unreadable: tuple[UnreadableFile, ...]


@dataclass(frozen=True)
class SeriesVolumes:
    """The volumes of one series, and what was set apart with the reason (localizers)."""

    volumes: tuple[Volume, ...]
    set_apart: tuple[str, ...]


def scan_files(paths: Iterable[Path]) -> ScanResult:
    """Read every path; group instances by series and keep a record of unreadable files.

    This is what the runner uses: one bad file must fail visibly without hiding the
    series that did arrive intact.
    """
    series: dict[str, list[Dataset]] = {}
    unreadable: list[UnreadableFile] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, struct.error) as exc:
            unreadable.append(UnreadableFile(path, f"not a readable DICOM file: {exc}"))
            continue
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            unreadable.append(UnreadableFile(path, "DICOM file without a SeriesInstanceUID"))
            continue
        series.setdefault(str(uid), []).append(ds)
    for bad in unreadable:
        logger.warning("unreadable file %s: %s", bad.path.name, bad.reason)
    return ScanResult(series=series, unreadable=tuple(unreadable))


def load_volumes(datasets: Sequence[Dataset]) -> SeriesVolumes:
    """Every volume of one series: one per stack (see ``pipelines/planes.py``).

    Raises ``VolumeError`` when the series cannot be read as volumes at all; a stack that
    fails fails the series (its reason names the stack).
    """
    found = series_stacks(datasets)
    series_uid = str(datasets[0].get("SeriesInstanceUID", "<missing>"))
    volumes = []
    for stack in found.stacks:
        where = f"series {series_uid}" + (f" ({stack.label})" if stack.label else "")

        def fail(problem: str, where: str = where) -> VolumeError:
            return VolumeError(f"{where}: {problem}")

        volumes.append(_build(stack, fail))
    return SeriesVolumes(volumes=tuple(volumes), set_apart=found.set_apart)


def load_series(datasets: Sequence[Dataset]) -> Volume:
    """The one volume of a series; raises ``VolumeError`` if it holds several (or none).

    Slices are ordered by their position along the slice normal (never by InstanceNumber
    or file order). A one-slice series gets the slice spacing SliceThickness, or
    ``pipelines.resample.DEFAULT_SINGLE_SLICE_SPACING_MM`` when that is absent.
    """
    found = load_volumes(datasets)
    if len(found.volumes) != 1:
        labels = ", ".join(volume.label for volume in found.volumes)
        raise VolumeError(
            f"series {found.volumes[0].series_uid} holds {len(found.volumes)} volumes ({labels})"
        )
    return found.volumes[0]


def _build(stack: Stack, fail: _Fail) -> Volume:
    depth = np.array([plane.position @ stack.planes[0].normal for plane in stack.planes])
    planes = tuple(stack.planes[i] for i in np.argsort(depth, kind="stable"))
    repeated = repeated_positions(planes)
    if repeated is not None:
        first, second = repeated
        raise fail(
            f"duplicate slice position {_fmt(first.position)} in instances "
            f"{first.describe()} and {second.describe()}"
        )
    grid = plan_grid(planes, fail)
    images = _plane_pixels(planes, fail)
    voxels = to_grid(images, grid)
    sources: dict[str, Dataset] = {}
    for plane in planes:
        sources.setdefault(
            str(plane.dataset.get("SOPInstanceUID", id(plane.dataset))), plane.dataset
        )
    if grid.note:
        logger.info("series %s: %s", planes[0].dataset.get("SeriesInstanceUID", "-"), grid.note)
    logger.debug(
        "loaded %d planes of %dx%d into a %s grid",
        len(planes),
        planes[0].rows,
        planes[0].cols,
        voxels.shape,
    )
    return Volume(
        voxels=voxels,
        affine=grid.affine,
        datasets=tuple(sources.values()),
        planes=planes,
        grid=grid,
        label=stack.label,
    )


def _plane_pixels(planes: Sequence[Plane], fail: _Fail) -> list[npt.NDArray[np.float32]]:
    """Each plane's values after the modality transform (rescale or Modality LUT)."""
    images: dict[int, npt.NDArray[np.float32]] = {}
    frames: dict[int, list[int]] = {}  # multi-frame instance -> indices of its planes
    for index, plane in enumerate(planes):
        if plane.frame is not None:
            frames.setdefault(id(plane.dataset), []).append(index)
            continue
        try:
            stored = plane.dataset.pixel_array
        except _DECODE_ERRORS as exc:
            raise fail(f"cannot decode pixel data of instance {plane.describe()}: {exc}") from exc
        # Rescale slope/intercept, or a Modality LUT Sequence: pydicom applies either.
        images[index] = np.asarray(apply_modality_lut(stored, plane.dataset), dtype=np.float32)
    for indices in frames.values():
        # Enhanced objects keep the rescale per frame in functional groups: highdicom reads
        # the frames with their own Pixel Value Transformation (one transform when shared).
        source = planes[indices[0]]
        try:
            stack = hd.Image.from_dataset(source.dataset, copy=False).get_frames(
                [frame for i in indices if (frame := planes[i].frame) is not None],
                dtype=np.float32,
                apply_real_world_transform=False,
                apply_voi_transform=False,
                apply_presentation_lut=False,
                apply_palette_color_lut=False,
                apply_icc_profile=False,
            )
        except _DECODE_ERRORS as exc:
            where = _sop(source.dataset)
            raise fail(f"cannot decode pixel data of instance {where}: {exc}") from exc
        for position, i in enumerate(indices):
            images[i] = stack[position]
    for index, plane in enumerate(planes):
        if images[index].shape != (plane.rows, plane.cols):
            raise fail(
                f"instance {plane.describe()} pixel data has shape {images[index].shape}, "
                f"not {plane.rows}x{plane.cols}"
            )
    return [images[index] for index in range(len(planes))]


def _planes_from_affine(volume: Volume) -> tuple[Plane, ...]:
    """One plane per slice of a volume built without planes (slice k is datasets[k])."""
    slices, rows, cols = volume.voxels.shape
    spacing = np.array(volume.spacing[1:])
    col_dir = volume.affine[:3, 1] / spacing[0]
    row_dir = volume.affine[:3, 2] / spacing[1]
    return tuple(
        Plane(
            dataset=ds,
            frame=None,
            position=(volume.affine @ np.array([k, 0.0, 0.0, 1.0]))[:3],
            row_dir=row_dir,
            col_dir=col_dir,
            pixel_spacing=spacing,
            rows=rows,
            cols=cols,
        )
        for k, ds in enumerate(volume.datasets[:slices])
    )


def _sop(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))


def _fmt(values: npt.NDArray[np.float64]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in np.round(values, 4)) + "]"
