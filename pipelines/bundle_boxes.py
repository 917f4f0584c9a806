"""Where a detection bundle's boxes are after its own post-processing, and how to read them.

MONAI's detector returns boxes in the voxel space of the image it was given, in
``StandardMode`` (corners ``x1, y1, z1, x2, y2, z2``). A Model Zoo post-processing then maps
them itself, e.g. the lung nodule detector's::

    ClipBoxToImaged -> AffineBoxToWorldCoordinated(affine_lps_to_ras=True)
                    -> ConvertBoxModed(dst_mode="cccwhd")

The transforms are run as written; this module reads the same Compose to know what comes
out: the box mode (``ConvertBoxModed``) and the space (voxels, or world coordinates: LPS
when ``affine_lps_to_ras`` undid the RAS affine of the image, else RAS). Transforms that
move boxes in ways the config does not state by itself (flips, zooms, rotations, crops)
are refused at load time rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from monai.apps.detection.transforms.dictionary import (
    AffineBoxToImageCoordinated,
    AffineBoxToWorldCoordinated,
    ConvertBoxModed,
    ConvertBoxToStandardModed,
)
from monai.data.box_utils import convert_box_mode
from monai.transforms.compose import Compose

from pipelines.bundle_geometry import LPS_TO_RAS, PatientBoxes, boxes_to_patient
from pipelines.errors import BundleError

Space = Literal["voxel", "ras", "lps"]
#: MONAI box transforms whose effect depends on data the pipeline does not track.
_UNSUPPORTED = (
    "ZoomBoxd",
    "RandZoomBoxd",
    "FlipBoxd",
    "RandFlipBoxd",
    "RotateBox90d",
    "RandRotateBox90d",
    "RandCropBoxByPosNegLabeld",
    "MaskToBoxd",
)


@dataclass(frozen=True)
class BoxFrame:
    """The space and MONAI box mode of boxes (``None``: ``StandardMode``)."""

    space: Space = "voxel"
    mode: Any = None


def _flatten(transforms: Iterable[Any]) -> Iterable[Any]:
    for transform in transforms:
        if isinstance(transform, Compose):
            yield from _flatten(transform.transforms)
        else:
            yield transform


def box_frame(postprocessing: Any) -> BoxFrame:
    """The frame of the detector's boxes once ``postprocessing`` (a Compose) has run."""
    frame = BoxFrame()
    if postprocessing is None:
        return frame
    for transform in _flatten([postprocessing]):
        name = type(transform).__name__
        if name in _UNSUPPORTED:
            raise BundleError(
                f"post-processing transform {name} moves boxes in a way the pipeline cannot "
                "follow to patient coordinates; remove it with a config override"
            )
        if isinstance(transform, AffineBoxToWorldCoordinated):
            space: Space = "lps" if transform.affine_lps_to_ras else "ras"
            frame = BoxFrame(space, frame.mode)
        elif isinstance(transform, AffineBoxToImageCoordinated):
            frame = BoxFrame("voxel", frame.mode)
        elif isinstance(transform, ConvertBoxModed):
            frame = BoxFrame(frame.space, transform.converter.dst_mode)
        elif isinstance(transform, ConvertBoxToStandardModed):
            frame = BoxFrame(frame.space, None)
    return frame


def frame_to_patient(
    boxes: npt.NDArray[np.float64], frame: BoxFrame, image_affine: npt.NDArray[np.float64]
) -> PatientBoxes:
    """Boxes in ``frame`` -> LPS mm: centres, lower and upper bounds, sizes (each (n, 3)).

    ``image_affine`` (RAS) is the affine of the image the detector saw; it is used only
    when the boxes are still in its voxel space.
    """
    corners = np.asarray(
        convert_box_mode(torch.as_tensor(boxes), src_mode=frame.mode, dst_mode="xyzxyz"),
        dtype=np.float64,
    ).reshape(-1, 6)
    if frame.space == "voxel":
        return boxes_to_patient(corners, image_affine)
    lows, highs = corners[:, :3], corners[:, 3:]
    if frame.space == "ras":  # x and y change sign: the bounds swap on those axes
        flip = np.diag(LPS_TO_RAS)[:3]
        lows, highs = np.minimum(lows * flip, highs * flip), np.maximum(lows * flip, highs * flip)
    return (lows + highs) / 2.0, lows, highs, highs - lows
