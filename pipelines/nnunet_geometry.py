"""Between our ``Volume`` (slice, row, col; LPS) and the array nnU-Net expects.

nnU-Net takes a channel-first array in the axis order its ``SimpleITKIO`` reader makes:
``sitk.GetArrayFromImage`` of an image with voxel axes (i, j, k) gives ``[k, j, i]``, and
the spacing listed the same way, ``[sk, sj, si]``. It never reorients: a model sees the
axes the training images had on disk. So the pipeline puts the volume in the orientation
the training images were in, exactly (flips and axis swaps, never resampling):

- an orientation code such as ``RAS``: voxel axes (i, j, k) increasing towards those
  patient directions (nibabel's closest canonical orientation for ``RAS``, which is
  what TotalSegmentator feeds its models and what nnU-Net's ``NibabelIOWithReorient``
  reads);
- ``dicom``: the series as stored, i = column, j = row, k = slice (what SimpleITK's
  DICOM series reader gives), so the array is our (slice, row, col) voxels unchanged.

The predicted label map comes back through the inverse of the same flips and swaps,
so it lies on the source slices voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from nibabel import orientations

from pipelines.bundle_geometry import ras_affine
from pipelines.nnunet_files import DICOM_ORDER
from pipelines.volume import Volume


@dataclass(frozen=True)
class NnunetInput:
    """The array nnU-Net reads ([k, j, i], no channel), its spacing, and the way back."""

    array: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    #: nibabel orientations of the source (x=col, y=row, z=slice) array and of (i, j, k).
    source_ornt: npt.NDArray[np.float64]
    target_ornt: npt.NDArray[np.float64]
    source_shape_xyz: tuple[int, int, int]

    def to_volume_grid(self, labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
        """A label map in nnU-Net's [k, j, i] order -> the volume's (slice, row, col) grid."""
        if labels.shape != self.array.shape:
            raise ValueError(
                f"prediction shape {labels.shape} differs from the input {self.array.shape}"
            )
        ijk = labels.transpose(2, 1, 0)
        back = orientations.ornt_transform(self.target_ornt, self.source_ornt)  # type: ignore[no-untyped-call]
        xyz = orientations.apply_orientation(ijk, back)  # type: ignore[no-untyped-call]
        if xyz.shape != self.source_shape_xyz:
            raise ValueError(f"label map shape {xyz.shape} is not {self.source_shape_xyz}")
        return np.ascontiguousarray(xyz.transpose(2, 1, 0), dtype=np.int32)


def to_nnunet(volume: Volume, orientation: str) -> NnunetInput:
    """The volume as nnU-Net's reader would have produced it in ``orientation``."""
    xyz = volume.voxels.transpose(2, 1, 0)
    affine = ras_affine(volume)
    current = orientations.io_orientation(affine)  # type: ignore[no-untyped-call]
    if orientation == DICOM_ORDER:
        target = current
    else:
        target = orientations.axcodes2ornt(tuple(orientation))  # type: ignore[no-untyped-call]
    transform = orientations.ornt_transform(current, target)  # type: ignore[no-untyped-call]
    ijk = orientations.apply_orientation(xyz, transform)  # type: ignore[no-untyped-call]
    new_affine = affine @ orientations.inv_ornt_aff(transform, xyz.shape)  # type: ignore[no-untyped-call]
    spacing_ijk = np.linalg.norm(new_affine[:3, :3], axis=0)
    return NnunetInput(
        array=np.ascontiguousarray(ijk.transpose(2, 1, 0), dtype=np.float32),
        spacing=(float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0])),
        source_ornt=np.asarray(current, dtype=np.float64),
        target_ornt=np.asarray(target, dtype=np.float64),
        source_shape_xyz=(int(xyz.shape[0]), int(xyz.shape[1]), int(xyz.shape[2])),
    )
