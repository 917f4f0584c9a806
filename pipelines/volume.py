"""Series -> volume: sort, check and stack single-frame slices into one 3D array.

A pipeline must never guess at geometry: if the slices of a series do not form a regular
stack we refuse with a ``VolumeError`` that says which slices are wrong and why, so a
failed job tells the admin what to fix.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut

from pipelines.errors import VolumeError

logger = logging.getLogger(__name__)

#: Builds a VolumeError whose message names the series.
_Fail = Callable[[str], VolumeError]

#: Two orientation vectors are "the same" when no component differs by more than this.
ORIENTATION_TOLERANCE = 1e-3
#: Relative tolerance on slice gaps (fraction of the median gap) and on pixel spacing.
SPACING_TOLERANCE = 0.01
#: A slice may sit off the stack axis by at most this fraction of the smallest pixel spacing.
IN_PLANE_SHIFT_TOLERANCE = 0.1
#: Slice spacing (mm) of a one-slice series without a usable SliceThickness.
DEFAULT_SINGLE_SLICE_SPACING_MM = 1.0


@dataclass(frozen=True, eq=False)
class Volume:
    """A regular 3D image: voxels indexed (slice, row, col) plus their place in the patient.

    ``affine`` maps (slice k, row r, col c, 1) to patient LPS millimetres; ``datasets`` are
    the source instances in axis-0 order (without any guarantee their pixel data is kept).
    """

    voxels: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]
    datasets: tuple[Dataset, ...]

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


def load_series(datasets: Sequence[Dataset]) -> Volume:
    """Stack the single-frame slices of one series into a ``Volume``, sorted along the normal.

    Slices are ordered by their position along the slice normal (never by InstanceNumber
    or file order). A one-slice series gets the slice spacing SliceThickness, or
    ``DEFAULT_SINGLE_SLICE_SPACING_MM`` when that is absent. Raises ``VolumeError``.
    """
    if not datasets:
        raise VolumeError("cannot build a volume from an empty series (no instances)")
    series_uid = str(datasets[0].get("SeriesInstanceUID", "<missing>"))

    def fail(problem: str) -> VolumeError:
        return VolumeError(f"series {series_uid}: {problem}")

    for ds in datasets:
        _check_instance(ds, series_uid, fail)

    row_dir, col_dir = _orientation(datasets[0])
    for ds in datasets[1:]:
        other_row, other_col = _orientation(ds)
        if (
            np.abs(other_row - row_dir).max() > ORIENTATION_TOLERANCE
            or np.abs(other_col - col_dir).max() > ORIENTATION_TOLERANCE
        ):
            raise fail(
                "mixed ImageOrientationPatient: "
                f"{_fmt(np.concatenate([row_dir, col_dir]))} in {_sop(datasets[0])} but "
                f"{_fmt(np.concatenate([other_row, other_col]))} in {_sop(ds)}"
            )
    normal = np.cross(row_dir, col_dir)

    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    pixel_spacing = _pixel_spacing(datasets[0])
    for ds in datasets[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise fail(
                f"image size differs: {rows}x{cols} in {_sop(datasets[0])} but "
                f"{ds.Rows}x{ds.Columns} in {_sop(ds)}"
            )
        other = _pixel_spacing(ds)
        if np.abs(other - pixel_spacing).max() > SPACING_TOLERANCE * pixel_spacing.min():
            raise fail(
                f"PixelSpacing differs: {_fmt(pixel_spacing)} in {_sop(datasets[0])} but "
                f"{_fmt(other)} in {_sop(ds)}"
            )

    positions = np.array([_position(ds) for ds in datasets], dtype=np.float64)
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    ordered = tuple(datasets[i] for i in order)
    positions, depth = positions[order], depth[order]

    step = _check_stack(positions, depth, normal, pixel_spacing, ordered, fail)
    if len(ordered) == 1:
        thickness = ordered[0].get("SliceThickness")
        step = (
            float(thickness)
            if thickness and float(thickness) > 0
            else (DEFAULT_SINGLE_SLICE_SPACING_MM)
        )

    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = normal * step
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = row_dir * pixel_spacing[1]
    affine[:3, 3] = positions[0]

    voxels = np.empty((len(ordered), rows, cols), dtype=np.float32)
    for k, ds in enumerate(ordered):
        voxels[k] = _rescaled_pixels(ds, rows, cols, fail)
    logger.debug("loaded series %s: %d slices of %dx%d", series_uid, len(ordered), rows, cols)
    return Volume(voxels=voxels, affine=affine, datasets=ordered)


def _check_instance(ds: Dataset, series_uid: str, fail: _Fail) -> None:
    uid = str(ds.get("SeriesInstanceUID", "<missing>"))
    if uid != series_uid:
        raise fail(f"instance {_sop(ds)} belongs to another series ({uid})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise fail(
            f"instance {_sop(ds)} is a multi-frame image ({frames} frames); "
            "multi-frame series are not supported yet"
        )
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "Rows",
        "Columns",
    ):
        if ds.get(keyword) in (None, ""):
            raise fail(f"instance {_sop(ds)} has no {keyword}")
    if "PixelData" not in ds:
        raise fail(f"instance {_sop(ds)} has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise fail(f"instance {_sop(ds)} is not a grayscale image (SamplesPerPixel != 1)")


def _check_stack(
    positions: npt.NDArray[np.float64],
    depth: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    pixel_spacing: npt.NDArray[np.float64],
    ordered: tuple[Dataset, ...],
    fail: _Fail,
) -> float:
    """Check the sorted slices form a regular stack along the normal; return the step (mm)."""
    if len(positions) < 2:
        return 0.0
    gaps = np.diff(depth)
    duplicates = np.flatnonzero(gaps < 1e-3)
    if duplicates.size:
        i = int(duplicates[0])
        raise fail(
            f"duplicate slice position {_fmt(positions[i])} in instances "
            f"{_sop(ordered[i])} and {_sop(ordered[i + 1])}"
        )
    median = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - median) > SPACING_TOLERANCE * median)
    if bad.size:
        distinct = sorted({round(float(g), 2) for g in gaps})
        where = ", ".join(
            f"{depth[i]:.2f}->{depth[i + 1]:.2f} mm ({gaps[i]:.2f} mm)" for i in bad[:5]
        )
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise fail(
            "slice spacing is not uniform: gaps of "
            f"{' and '.join(f'{g} mm' for g in distinct[:6])} (median {median:.2f} mm); "
            f"deviating gaps along the slice normal at {where}{more} "
            "(missing or extra slices?)"
        )
    # Every slice must lie on the line through slice 0 along the normal (no gantry tilt/shear).
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shift = np.linalg.norm(in_plane, axis=1)
    worst = int(np.argmax(shift))
    if shift[worst] > IN_PLANE_SHIFT_TOLERANCE * float(pixel_spacing.min()):
        raise fail(
            f"slices are not stacked along the slice normal (sheared stack, e.g. gantry "
            f"tilt): instance {_sop(ordered[worst])} is {shift[worst]:.2f} mm off the axis"
        )
    return float((depth[-1] - depth[0]) / (len(depth) - 1))


def _rescaled_pixels(ds: Dataset, rows: int, cols: int, fail: _Fail) -> npt.NDArray[np.float32]:
    try:
        stored = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
        raise fail(f"cannot decode pixel data of instance {_sop(ds)}: {exc}") from exc
    if stored.shape != (rows, cols):
        raise fail(f"instance {_sop(ds)} pixel data has shape {stored.shape}, not {rows}x{cols}")
    # Rescale slope/intercept, or a Modality LUT Sequence: pydicom applies whichever is there.
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)


def _orientation(ds: Dataset) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    if iop.shape != (6,):
        raise VolumeError(f"instance {_sop(ds)}: ImageOrientationPatient needs 6 values")
    row_dir, col_dir = iop[:3], iop[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if min(norms) < 1e-6:
        raise VolumeError(f"instance {_sop(ds)}: ImageOrientationPatient has a zero vector")
    row_dir, col_dir = row_dir / norms[0], col_dir / norms[1]
    if abs(float(row_dir @ col_dir)) > ORIENTATION_TOLERANCE * 10:
        raise VolumeError(
            f"instance {_sop(ds)}: ImageOrientationPatient vectors are not orthogonal"
        )
    return row_dir, col_dir


def _pixel_spacing(ds: Dataset) -> npt.NDArray[np.float64]:
    spacing = np.array([float(v) for v in ds.PixelSpacing], dtype=np.float64)
    if spacing.shape != (2,) or spacing.min() <= 0:
        raise VolumeError(f"instance {_sop(ds)}: invalid PixelSpacing {list(spacing)}")
    return spacing


def _position(ds: Dataset) -> npt.NDArray[np.float64]:
    position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    if position.shape != (3,):
        raise VolumeError(f"instance {_sop(ds)}: ImagePositionPatient needs 3 values")
    return position


def _sop(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))


def _fmt(values: npt.NDArray[np.float64]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in np.round(values, 4)) + "]"
