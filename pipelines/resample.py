"""Irregular stacks <-> a regular grid: gantry tilt (shear), uneven and missing slices.

The grid keeps the source planes' orientation and pixel spacing; its slice axis is the
slice normal, so every source plane is a plane of the grid (at a fractional slice index,
shifted in-plane by the shear). Images go to the grid by **linear** interpolation (along
the normal between the two neighbouring source planes, and in-plane where the shear
shifts by a fraction of a pixel); a grid point no source plane covers gets the series'
lowest value (air on CT). Masks come back to every source plane by the same linear
interpolation, thresholded at 0.5, so a SEG frame lies exactly on each source image.
A gap wider than ``MAX_GAP_RATIO`` times the median gap is not interpolated: the series
fails with the gap named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from pipelines.errors import VolumeError
from pipelines.planes import Plane

#: Largest gap between neighbouring slices (along the normal) that is interpolated, as a
#: multiple of the median gap: 2.5 interpolates over one missing slice, refuses two.
MAX_GAP_RATIO = 2.5
#: Relative tolerance on slice gaps (fraction of the median gap) for a regular stack.
SPACING_TOLERANCE = 0.01
#: A slice may sit off the stack axis by this fraction of a pixel and count as unsheared.
SHEAR_TOLERANCE_PX = 0.1
#: Slice spacing (mm) of a one-slice series without a usable SliceThickness.
DEFAULT_SINGLE_SLICE_SPACING_MM = 1.0
#: Interpolation weights this close to 0 or 1 take one plane as it is.
_EXACT = 1e-6

_Fail = Callable[[str], VolumeError]
_Array = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Grid:
    """The regular grid of a stack of sorted planes, and where each plane lies in it.

    ``plane_slices`` is each plane's fractional slice index, ``plane_offsets`` the grid
    (row, column) of each plane's first pixel. ``regular`` is True when the grid's slices
    are the source planes themselves (nothing is interpolated).
    """

    affine: npt.NDArray[np.float64]
    shape: tuple[int, int, int]
    plane_slices: npt.NDArray[np.float64]
    plane_offsets: npt.NDArray[np.float64]
    regular: bool
    note: str


def plan_grid(planes: Sequence[Plane], fail: _Fail) -> Grid:
    """The grid for ``planes`` (sorted along the normal, no two at one position)."""
    first = planes[0]
    normal = first.normal
    relative = np.array([plane.position - first.position for plane in planes])
    depth = relative @ normal
    row_spacing, col_spacing = (float(v) for v in first.pixel_spacing)
    offsets = np.column_stack(
        [relative @ first.col_dir / row_spacing, relative @ first.row_dir / col_spacing]
    )
    sheared = bool(np.abs(offsets).max() > SHEAR_TOLERANCE_PX) if len(planes) > 1 else False
    if len(planes) == 1:
        thickness = first.dataset.get("SliceThickness")
        step = float(thickness) if thickness and float(thickness) > 0 else 0.0
        step = step or DEFAULT_SINGLE_SLICE_SPACING_MM
        gaps = np.array([step])
    else:
        gaps = np.diff(depth)
    median = float(np.median(gaps))
    widest = int(np.argmax(gaps))
    if len(planes) > 1 and gaps[widest] > MAX_GAP_RATIO * median:
        raise fail(
            f"slice spacing is not uniform: the gap of {gaps[widest]:.2f} mm between "
            f"{planes[widest].describe()} and {planes[widest + 1].describe()} is more than "
            f"{MAX_GAP_RATIO:g} times the usual gap ({median:.2f} mm, the median), too "
            "large to interpolate (missing slices?)"
        )
    uneven = bool(np.abs(gaps - median).max() > SPACING_TOLERANCE * median)
    if len(planes) == 1:
        count, step = 1, median
    elif uneven:
        count = round(float(depth[-1]) / median) + 1
        step = float(depth[-1]) / (count - 1)
    else:
        count, step = len(planes), float(depth[-1]) / (len(planes) - 1)
    low = np.floor(offsets.min(axis=0) + 1e-3) if sheared else np.zeros(2)
    extent = np.ceil(offsets.max(axis=0) - low - 1e-3) if sheared else np.zeros(2)
    shape = (count, first.rows + int(extent[0]), first.cols + int(extent[1]))
    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = normal * step
    affine[:3, 1] = first.col_dir * row_spacing
    affine[:3, 2] = first.row_dir * col_spacing
    affine[:3, 3] = (
        first.position + low[0] * row_spacing * first.col_dir + low[1] * col_spacing * first.row_dir
    )
    notes = []
    if sheared:
        shift_mm = float(np.hypot((offsets[-1, 0]) * row_spacing, (offsets[-1, 1]) * col_spacing))
        tilt = math.degrees(math.atan2(shift_mm, float(depth[-1])))
        notes.append(f"sheared stack (gantry tilt {tilt:.1f} degrees)")
    if uneven:
        notes.append(f"uneven slice gaps of {gaps.min():.2f} to {gaps.max():.2f} mm")
    note = ""
    if notes:
        note = (
            f"{' and '.join(notes)}: resampled to a regular grid of {count} slices "
            f"{step:.2f} mm apart (linear interpolation), results mapped back to the "
            f"{len(planes)} source slices"
        )
    return Grid(
        affine=affine,
        shape=shape,
        plane_slices=depth / step,
        plane_offsets=offsets - low,
        regular=not (sheared or uneven),
        note=note,
    )


def to_grid(images: Sequence[_Array], grid: Grid) -> _Array:
    """The source images (one per plane, in plane order) on the regular grid."""
    if grid.regular:
        return np.stack(images).astype(np.float32, copy=False)
    fill = float(min(float(image.min()) for image in images))
    count, rows, cols = grid.shape
    out = np.empty(grid.shape, dtype=np.float32)
    positions = grid.plane_slices
    for j in range(count):
        i = int(
            np.clip(np.searchsorted(positions, j + _EXACT, side="right") - 1, 0, len(images) - 1)
        )
        following = min(i + 1, len(images) - 1)
        span = positions[following] - positions[i]
        weight = float(np.clip((j - positions[i]) / span, 0.0, 1.0)) if span > 0 else 0.0
        out[j] = _in_plane(images[i], -grid.plane_offsets[i], (rows, cols), fill)
        if weight > _EXACT:
            out[j] *= 1.0 - weight
            out[j] += weight * _in_plane(
                images[following], -grid.plane_offsets[following], (rows, cols), fill
            )
    return out


def to_planes(
    mask: npt.NDArray[np.bool_], grid: Grid, rows: int, cols: int
) -> npt.NDArray[np.bool_]:
    """A grid mask on every source plane: linear interpolation, thresholded at 0.5."""
    if grid.regular:
        return mask
    count = grid.shape[0]
    out = np.zeros((len(grid.plane_slices), rows, cols), dtype=np.bool_)
    for i, position in enumerate(grid.plane_slices):
        j = int(np.clip(math.floor(position + _EXACT), 0, max(count - 2, 0)))
        weight = float(np.clip(position - j, 0.0, 1.0)) if count > 1 else 0.0
        value = np.zeros((rows, cols), dtype=np.float32)
        for slice_index, share in ((j, 1.0 - weight), (j + 1, weight)):
            if share <= _EXACT or not mask[slice_index].any():
                continue
            value += share * _in_plane(
                mask[slice_index].astype(np.float32), grid.plane_offsets[i], (rows, cols), 0.0
            )
        out[i] = value >= 0.5
    return out


def _in_plane(
    image: _Array, offset: npt.NDArray[np.float64], shape: tuple[int, int], fill: float
) -> _Array:
    """``image`` sampled at (row + offset[0], col + offset[1]) on a ``shape`` canvas."""
    whole = np.round(offset)
    if np.abs(offset - whole).max() < _EXACT:
        out = np.full(shape, fill, dtype=np.float32)
        r0, c0 = int(whole[0]), int(whole[1])
        src_r = slice(max(r0, 0), min(r0 + shape[0], image.shape[0]))
        src_c = slice(max(c0, 0), min(c0 + shape[1], image.shape[1]))
        if src_r.start < src_r.stop and src_c.start < src_c.stop:
            out[src_r.start - r0 : src_r.stop - r0, src_c.start - c0 : src_c.stop - c0] = image[
                src_r, src_c
            ]
        return out
    result: _Array = ndimage.affine_transform(
        image.astype(np.float32, copy=False),
        np.ones(2),
        offset=offset,
        output_shape=shape,
        order=1,
        mode="constant",
        cval=fill,
    )
    return result
