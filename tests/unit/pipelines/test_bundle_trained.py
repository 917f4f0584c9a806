"""A small MONAI UNet bundle trained for seconds on synthetic spheres predicts spheres in a
DICOM series whose slices are oblique: its SEG, read back from the file, overlaps the true
spheres (computed analytically from the series geometry). A model that actually predicts,
through the bundle's own resampling and Invertd, lands on the right voxels.
"""

from __future__ import annotations

import time
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
import torch
from monai.bundle.config_parser import ConfigParser

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.volume import Volume, load_series
from tests.support.bundles import SMALL_UNET, segmentation_config, train_segmenter, write_bundle
from tests.support.dicom_validate import validation_errors
from tests.support.phantom import Nodule, make_ct_phantom
from tests.unit.pipelines.test_bundle import OBLIQUE, dice, run_bundle, seg_masks

WINDOW = (1000.0, 1500.0)  # only the spheres are bright in the bundle's input
SPHERES = (Nodule((-40.0, 10.0, 20.0), 30.0), Nodule((35.0, -15.0, -25.0), 22.0))


def true_spheres(volume: Volume) -> npt.NDArray[np.bool_]:
    k, r, c = np.meshgrid(*[np.arange(n) for n in volume.voxels.shape], indexing="ij")
    index = np.stack([k, r, c, np.ones_like(k)], axis=-1).astype(np.float64)
    points = (index @ volume.affine.T)[..., :3]
    inside = np.zeros(volume.voxels.shape, dtype=bool)
    for sphere in SPHERES:
        inside |= np.linalg.norm(points - np.array(sphere.centre), axis=-1) <= sphere.diameter / 2
    return inside


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # As in the Model Zoo: a sliding window of the training patch size (it also pads
    # volumes whose size the UNet's strides do not divide).
    window = {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "overlap": 0.25}
    config = segmentation_config(
        SMALL_UNET, pixdim=(4.0, 4.0, 4.0), intensity=WINDOW, inferer=window
    )
    network = ConfigParser(config).get_parsed_content("network_def")
    start = time.perf_counter()
    train_segmenter(network, steps=40, shape=(32, 32, 32))
    print(f"trained the UNet in {time.perf_counter() - start:.1f} s")
    return write_bundle(
        tmp_path_factory.mktemp("bundles") / "spheres_unet",
        config,
        channel_def={"0": "background", "1": "sphere"},
        state_dict=network.state_dict(),
    )


def test_trained_unet_seg_overlaps_the_true_spheres(trained_bundle: Path, tmp_path: Path) -> None:
    phantom = make_ct_phantom(
        slices=30,
        size=64,
        pixel_spacing=3.0,
        slice_spacing=5.0,
        orientation=OBLIQUE,
        shuffle=True,
        nodules=SPHERES,
        nodule_hu=1500.0,
    )
    volume = load_series(phantom.datasets)
    truth = true_spheres(volume)
    assert truth.sum() > 300
    pipeline = BundlePipeline(BundleSpec(name="spheres", path=trained_bundle))
    _, written = run_bundle(pipeline, phantom.datasets, tmp_path)
    [seg_path] = [p for p in written if p.name.startswith("SEG-")]
    # a bundle's SEG and SR on an oblique series: dciodvfy, PixelMed and dcmqi
    errors = validation_errors(written, tmp_path / "validation")
    assert errors == [], "\n".join(errors)
    masks = seg_masks(seg_path, volume)
    assert list(masks) == ["sphere"]
    assert hd.seg.segread(seg_path).SegmentSequence[0].SegmentLabel == "sphere"
    score = dice(masks["sphere"], truth)
    print(f"Dice of the trained UNet SEG: {score:.3f}")
    assert score > 0.7, f"Dice {score:.3f} of the trained model's SEG against the true spheres"
    assert not torch.is_inference_mode_enabled()
