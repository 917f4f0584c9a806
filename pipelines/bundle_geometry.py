"""Between our ``Volume`` (slice, row, col; LPS) and a MONAI image (x, y, z; RAS).

A bundle's transforms expect what MONAI's ``LoadImage`` would have produced from a file:
an array indexed (x = column, y = row, z = slice), channel-less, with a RAS affine. The
pipeline builds exactly that from the source slices, so a Model Zoo bundle sees the same
input as in training; outputs come back through the same affines, so nothing is guessed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from monai.data.meta_tensor import MetaTensor
from scipy import ndimage

from pipelines.volume import Volume

#: LPS (DICOM patient) <-> RAS (MONAI/NIfTI world): flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Two affines are "the same grid" when no entry differs by more than this (mm).
AFFINE_TOLERANCE_MM = 1e-3

_Points = npt.NDArray[np.float64]
#: Boxes in patient coordinates (LPS mm), each (n, 3): centres, lower and upper bounds, sizes.
PatientBoxes = tuple[_Points, _Points, _Points, _Points]


def ras_affine(volume: Volume) -> npt.NDArray[np.float64]:
    """The RAS affine of the (x = col, y = row, z = slice) array of ``volume``."""
    xyz: npt.NDArray[np.float64] = volume.affine[:, [2, 1, 0, 3]]
    result: npt.NDArray[np.float64] = LPS_TO_RAS @ xyz
    return result


def to_meta_tensor(volume: Volume, *, channel_first: bool) -> MetaTensor:
    """The volume as ``LoadImage`` would return it (channel-less unless ``channel_first``)."""
    array = np.ascontiguousarray(volume.voxels.transpose(2, 1, 0))
    affine = torch.as_tensor(ras_affine(volume), dtype=torch.float64)
    meta = {
        "original_affine": affine.clone(),
        "spatial_shape": np.array(array.shape),
        "original_channel_dim": 0 if channel_first else "no_channel",
        "space": "RAS",
        "filename_or_obj": volume.series_uid,
    }
    data = torch.from_numpy(array[None] if channel_first else array)
    return MetaTensor(data, affine=affine, meta=meta)


def to_volume_grid(
    labels: npt.NDArray[np.int32], affine: npt.NDArray[np.float64], volume: Volume
) -> npt.NDArray[np.int32]:
    """A label map (x, y, z) with RAS ``affine`` on the volume's (slice, row, col) grid.

    When the bundle inverted its own resampling (Invertd) the grid is the source grid and
    this is a transpose; otherwise every source voxel centre is looked up (nearest label)
    through the two affines, so a bundle without inversion still lands on the images.
    """
    expected = volume.voxels.shape[::-1]
    if labels.shape == expected and np.abs(affine - ras_affine(volume)).max() < AFFINE_TOLERANCE_MM:
        return np.ascontiguousarray(labels.transpose(2, 1, 0))
    to_pred = np.linalg.inv(affine) @ LPS_TO_RAS @ volume.affine
    slices, rows, cols = volume.voxels.shape
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    out = np.zeros(volume.voxels.shape, dtype=np.int32)
    for k in range(slices):
        index = np.stack([np.full(r.shape, k), r, c, np.ones(r.shape)]).reshape(4, -1)
        coords = (to_pred @ index)[:3]
        out[k] = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0).reshape(
            rows, cols
        )
    return out


def boxes_to_patient(
    boxes: npt.NDArray[np.float64], affine: npt.NDArray[np.float64]
) -> PatientBoxes:
    """Voxel boxes (x1, y1, z1, x2, y2, z2) of an image with RAS ``affine`` -> LPS mm.

    Returns (n, 3) arrays: the centres, the lower and upper bounds (over the 8 corners)
    and the box sizes in mm along the image axes. Box coordinates are taken as MONAI's
    ``AffineBoxToWorldCoordinate`` does: the affine applied to the corner coordinates.
    """
    lps = LPS_TO_RAS @ affine  # the same flip converts RAS -> LPS
    n = boxes.shape[0]
    corners = np.empty((n, 8, 4))
    for i, (xi, yi, zi) in enumerate(np.ndindex(2, 2, 2)):
        corners[:, i] = np.stack(
            [boxes[:, 3 * xi], boxes[:, 1 + 3 * yi], boxes[:, 2 + 3 * zi], np.ones(n)], axis=1
        )
    world = corners @ lps.T
    centre_index = np.concatenate([(boxes[:, :3] + boxes[:, 3:]) / 2.0, np.ones((n, 1))], axis=1)
    centres = (centre_index @ lps.T)[:, :3]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    sizes = np.abs(boxes[:, 3:] - boxes[:, :3]) * spacing
    return centres, world[:, :, :3].min(axis=1), world[:, :, :3].max(axis=1), sizes
