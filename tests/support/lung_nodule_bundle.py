"""The Model Zoo ``lung_nodule_ct_detection`` bundle with weights whose output is known.

The bundle (config and ``scripts/``, Apache-2.0) is in ../shared/data without its weights.
The tests copy it unmodified and write ``models/model.pt`` for the bundle's own network (MONAI's
RetinaNet on a ResNet-50 FPN, built from its ``network_def``), constructed rather than trained:

- the stem convolution is a centre-surround blob filter (mean of a sphere minus mean of the
  shell around it, a nodule-sized blob in lung scores highest; flat tissue scores nothing);
- every residual block passes its input through unchanged (the residual branch is zeroed), and
  the FPN keeps the finest level's response in channel 0 and the coarser levels' in channel 32;
- the classification tower copies channel 0 (GroupNorm then ranks it), so only the finest
  level scores; its logit for the largest anchor shape is ``gain * response + bias``;
- the regression head outputs constants: a shift that moves each anchor's centre (placed by
  MONAI at ``i * stride + stride // 2``) onto the voxel its feature is centred on
  (``i * stride``), and a scale to a given box size.

So the detector's best box is centred on a voxel of the blob: exactly on its centre when that
centre is a multiple of the stride (4, 4, 2) in the network input, else within half a stride.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import torch

from tests.conftest import shared_data_path
from tests.support.dicom_validate import dcmtk_sr
from tests.support.phantom import Nodule, Orientation, image_point_mm, make_ct_phantom

BUNDLE = "lung_nodule_ct_detection"
#: The finest feature level's stride in network-input voxels (stem (2, 2, 1), max-pool 2).
STRIDE = (4, 4, 2)
#: The anchor shape that scores: the bundle's third base anchor shape at scale 1.
ANCHOR = (10, 10, 6)
INNER_RADIUS, GAP_RADIUS, OUTER_RADIUS = 1.0, 2.0, 3.5  # voxels, of the 7x7x7 stem kernel
GAIN, BIAS = 1.0, -20.0

SPACING = 3.0  # mm, isotropic: the network input has the same lattice in every orientation
SIZE = 40  # voxels a side: a 120 mm cube centred on the patient origin
# LPS mm of network-input voxel (32, 16, 26) of the RAS lattice, (i - 19.5) * 3 mm from the
# centre (x and y change sign between RAS and LPS): on the finest feature lattice, so the
# detector's box is centred on it exactly. In the right lung, 10 mm, dense.
NODULE = Nodule((-37.5, 10.5, 19.5), 10.0)
NODULE_HU = 300.0
#: The box's size in network-input voxels: the nodule's diameter.
NODULE_BOX = (NODULE.diameter / SPACING,) * 3
#: Tolerance of "exactly": float32 rounding in the network output, far below a voxel.
EXACT_MM = 0.05


def chest(orientation: Orientation, description: str = "chest") -> list[pydicom.Dataset]:
    """The chest phantom cube with the nodule, slices shuffled."""
    phantom = make_ct_phantom(
        slices=SIZE,
        size=SIZE,
        pixel_spacing=SPACING,
        slice_spacing=SPACING,
        orientation=orientation,
        shuffle=True,
        nodules=[NODULE],
        nodule_hu=NODULE_HU,
    )
    for ds in phantom.datasets:
        ds.SeriesDescription = description
    return phantom.datasets


def assert_sr_box_on_the_nodule(sr: Path, datasets: list[pydicom.Dataset]) -> None:
    """The SR's one detection is drawn on the source slice through the nodule's centre,
    and the polyline's corners are the nodule's bounds in that plane (read by DCMTK)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    groups = dcmtk_sr(sr).groups  # one detection: its two planar groups, one tracking UID
    assert len({group.tracking_uid for group in groups}) == 1, groups
    [box] = {loc for group in groups for loc in group.locations if loc.value_type == "SCOORD"}
    image = by_uid[box.reference]
    corners = np.array([image_point_mm(image, c, r) for c, r in box.points])
    iop = np.array(image.ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    centre = np.array(NODULE.centre)
    assert abs((centre - corners[0]) @ normal) < EXACT_MM, "key slice through the centre"
    radius = NODULE.diameter / 2.0
    in_plane = np.abs(normal) < 0.5
    np.testing.assert_allclose(corners.min(axis=0)[in_plane], (centre - radius)[in_plane], atol=0.1)
    np.testing.assert_allclose(corners.max(axis=0)[in_plane], (centre + radius)[in_plane], atol=0.1)


def copy_bundle(root: Path) -> Path:
    """The bundle as published (config, metadata, scripts), in ``root``, without weights."""
    source = shared_data_path("monai-bundle-configs", BUNDLE)
    target = root / BUNDLE
    shutil.copytree(source, target)
    return target


def blob_detector_state(
    network: torch.nn.Module, box_voxels: tuple[float, float, float] = ANCHOR
) -> dict[str, torch.Tensor]:
    """The state dict described above, for the bundle's ``network_def``.

    ``box_voxels``: the size of every box (the regression scales the anchor to it).
    """
    state = {key: torch.zeros_like(value) for key, value in network.state_dict().items()}
    for key, value in state.items():
        if key.endswith("running_var"):
            value.fill_(1.0)  # BatchNorm in eval: (x - 0) / 1, times the weight set below
    body = "feature_extractor.body."
    # Stem: channel 0 = mean(sphere) - mean(shell); BatchNorm passes channel 0.
    grid = np.stack(np.meshgrid(*[np.arange(7) - 3] * 3, indexing="ij"))
    distance = np.sqrt((grid**2).sum(axis=0))
    inner, shell = distance <= INNER_RADIUS, (distance > GAP_RADIUS) & (distance <= OUTER_RADIUS)
    kernel = inner / inner.sum() - shell / shell.sum()
    state[body + "conv1.weight"][0, 0] = torch.from_numpy(kernel.astype(np.float32))
    state[body + "bn1.weight"][0] = 1.0
    # Residual blocks pass through (their bn3 stays zero); the first block of each layer has
    # a projection: layer1 keeps channel 0, layer2 moves it to channel 32.
    for layer, (src, dst) in (("layer1", (0, 0)), ("layer2", (0, 32))):
        state[f"{body}{layer}.0.downsample.0.weight"][dst, src] = 1.0
        state[f"{body}{layer}.0.downsample.1.weight"][dst] = 1.0
    fpn = "feature_extractor.fpn."
    state[fpn + "inner_blocks.0.weight"][0, 0] = 1.0
    state[fpn + "inner_blocks.1.weight"][32, 32] = 1.0
    for level in (0, 1):
        for channel in (0, 32):
            state[f"{fpn}layer_blocks.{level}.weight"][channel, channel, 1, 1, 1] = 1.0
    # Classification: copy channel 0 through the tower; score only the largest anchor.
    head = "classification_head."
    for conv, norm in ((0, 1), (3, 4), (6, 7), (9, 10)):
        state[f"{head}conv.{conv}.weight"][0, 0, 1, 1, 1] = 1.0
        state[f"{head}conv.{norm}.weight"][0] = 1.0
    state[head + "cls_logits.weight"][2, 0, 1, 1, 1] = GAIN
    state[head + "cls_logits.bias"][:] = torch.tensor([-30.0, -30.0, BIAS])
    # Regression: deltas (dx, dy, dz, dw, dh, dd) per anchor; shift the centre by -stride // 2.
    bias = state["regression_head.bbox_reg.bias"].view(3, 6)
    for axis in range(3):
        bias[2, axis] = -(STRIDE[axis] // 2) / ANCHOR[axis]
        bias[2, 3 + axis] = float(np.log(box_voxels[axis] / ANCHOR[axis]))
    return state


def write_blob_weights(bundle: Path, box_voxels: tuple[float, float, float] = NODULE_BOX) -> None:
    """Build the bundle's own network from its config and save the weights next to it."""
    from monai.bundle.config_parser import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def")
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(blob_detector_state(network, box_voxels), bundle / "models" / "model.pt")
