"""Reading a detection bundle's box post-processing: which space and mode its boxes end in.

The transforms are MONAI's own, run on a box with known voxel coordinates on an image with a
known RAS affine; the patient-coordinate result is worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.detection.transforms.dictionary import (
    AffineBoxToWorldCoordinated,
    ClipBoxToImaged,
    ConvertBoxModed,
    FlipBoxd,
)
from monai.data.meta_tensor import MetaTensor
from monai.transforms.compose import Compose

from pipelines.bundle_boxes import BoxFrame, box_frame, frame_to_patient
from pipelines.errors import BundleError

#: RAS affine: 2 mm voxels, x flipped (index grows to the patient's left), origin offset.
AFFINE = np.array(
    [[-2.0, 0.0, 0.0, 100.0], [0.0, 2.0, 0.0, -50.0], [0.0, 0.0, 3.0, 10.0], [0, 0, 0, 1.0]]
)
#: Voxel box x 10..14, y 20..30, z 2..4 (StandardMode corners).
BOX = [[10.0, 20.0, 2.0, 14.0, 30.0, 4.0]]
# RAS corners: x 100-2*[10,14] = [72, 80], y -50+2*[20,30] = [-10, 10], z 10+3*[2,4] = [16, 22];
# LPS flips x and y: x [-80, -72], y [-10, 10], z [16, 22].
LPS_LOW, LPS_HIGH = np.array([-80.0, -10.0, 16.0]), np.array([-72.0, 10.0, 22.0])


def run(*transforms: object) -> tuple[np.ndarray, BoxFrame]:
    image = MetaTensor(torch.zeros(1, 40, 40, 10), affine=torch.as_tensor(AFFINE))
    compose = Compose(list(transforms))
    data = compose({"box": torch.tensor(BOX), "label": torch.tensor([0]), "image": image})
    return np.asarray(data["box"], dtype=np.float64), box_frame(compose)


@pytest.mark.parametrize("lps", [True, False])
def test_world_boxes_in_centre_size_mode_become_lps_bounds(lps: bool) -> None:
    boxes, frame = run(
        ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image"),
        AffineBoxToWorldCoordinated(
            box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=lps
        ),
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
    )
    assert frame == BoxFrame("lps" if lps else "ras", "cccwhd")
    centres, lows, highs, sizes = frame_to_patient(boxes, frame, AFFINE)
    np.testing.assert_allclose(lows[0], LPS_LOW)
    np.testing.assert_allclose(highs[0], LPS_HIGH)
    np.testing.assert_allclose(centres[0], (LPS_LOW + LPS_HIGH) / 2)
    np.testing.assert_allclose(sizes[0], [8.0, 20.0, 6.0])


def test_voxel_boxes_go_through_the_image_affine() -> None:
    boxes, frame = run(
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="xxyyzz"),
    )
    assert frame == BoxFrame("voxel", "xxyyzz")
    _, lows, highs, _ = frame_to_patient(boxes, frame, AFFINE)
    np.testing.assert_allclose(lows[0], LPS_LOW)
    np.testing.assert_allclose(highs[0], LPS_HIGH)


def test_a_box_transform_it_cannot_follow_is_refused() -> None:
    flip = FlipBoxd(image_keys="image", box_keys="box", box_ref_image_keys="image")
    with pytest.raises(BundleError, match="FlipBoxd"):
        box_frame(Compose([Compose([flip])]))
