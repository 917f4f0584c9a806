"""Bundle pipelines: tiny bundles written by the tests, run through the whole path to SEG.

The geometry proof: a bundle whose network is a 1x1x1 convolution with constructed weights
predicts a known intensity threshold. Its own Orientation/Spacing pre-processing resamples
the series to another grid, its Invertd maps the prediction back, and the SEG read back
from the written file must match the same threshold evaluated on the original slices.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
import torch
from pydicom.dataset import Dataset

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.bundle_outputs import LOCAL_SCHEME, LabelCode
from pipelines.errors import DeviceOutOfMemoryError, ModelRunError
from pipelines.routing import RoutingRule
from pipelines.runner import StudyResult, annotate_study
from pipelines.volume import Volume, load_series
from tests.support.bundles import (
    CONV_1X1X1,
    segmentation_config,
    threshold_weights,
    write_bundle,
)
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.phantom import Nodule, make_ct_phantom

DENSE_HU = 300.0
#: Bone-dense spheres at asymmetric places, so offsets along every axis cost Dice.
DENSE_SPHERES = (
    Nodule((-65.0, 5.0, 30.0), 40.0),
    Nodule((60.0, -20.0, -30.0), 30.0),
)
OBLIQUE = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    return float(2.0 * (a & b).sum() / max(1, a.sum() + b.sum()))


def seg_masks(path: Path, volume: Volume) -> dict[str, npt.NDArray[np.bool_]]:
    """Every segment of the SEG file at ``path`` on the volume's grid, by segment label."""
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    masks = {}
    for item in seg.SegmentSequence:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=[int(item.SegmentNumber)],
            assert_missing_frames_are_empty=True,
        )
        masks[str(item.SegmentLabel)] = pixels[..., 0].astype(bool)
    return masks


def run_bundle(
    pipeline: BundlePipeline, datasets: list[Dataset], out: Path
) -> tuple[StudyResult, list[Path]]:
    """Run the pipeline through the runner; write the outputs like ``pacs-annotator run``."""
    result = annotate_study(
        _write(datasets, out / "in"),
        rules=(RoutingRule(pipelines=(pipeline.name,), modality="CT"),),
        pipelines={pipeline.name: pipeline},
        software_version="9.9.9",
    )
    assert not result.failures, result.failures
    written = []
    for ds in result.outputs:
        path = out / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return result, written


def _write(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def threshold_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles") / "dense_threshold"
    return write_bundle(
        root,
        segmentation_config(CONV_1X1X1, pixdim=(3.0, 3.0, 5.0)),
        channel_def={"0": "background", "1": "bone"},
        state_dict=threshold_weights(DENSE_HU),
    )


@pytest.mark.parametrize("orientation", ["axial", "sagittal", OBLIQUE], ids=str)
def test_seg_matches_the_threshold_on_the_original_slices(
    threshold_bundle: Path,
    tmp_path: Path,
    orientation: str | tuple[float, float, float, float, float, float],
) -> None:
    phantom = make_ct_phantom(
        slices=40,
        size=112,
        pixel_spacing=2.5,
        slice_spacing=4.0,
        orientation=orientation,  # type: ignore[arg-type]
        shuffle=True,
        nodules=DENSE_SPHERES,
        nodule_hu=700.0,
    )
    volume = load_series(phantom.datasets)
    pipeline = BundlePipeline(BundleSpec(name="dense-threshold", path=threshold_bundle))
    result, written = run_bundle(pipeline, phantom.datasets, tmp_path)
    [seg_path] = [p for p in written if p.name.startswith("SEG-")]
    assert dciodvfy_errors(seg_path) == []
    for path in written:
        assert dciodvfy_errors(path) == [], path.name
    masks = seg_masks(seg_path, volume)
    assert list(masks) == ["bone"]
    truth = volume.voxels > DENSE_HU
    assert truth.sum() > 1000, "the phantom must contain the dense structures"
    score = dice(masks["bone"], truth)
    assert score >= 0.93, f"Dice {score:.3f} against the threshold on the original slices"
    # The check can fail: a reversed axis (slice order, row or column direction) or an
    # offset of two voxels costs far more than the resampling does.
    flipped = [dice(masks["bone"], np.flip(truth, axis=axis)) for axis in range(3)]
    assert max(flipped) < 0.9, flipped
    shifted = [dice(masks["bone"], np.roll(truth, 2, axis=axis)) for axis in range(3)]
    assert min(shifted) < 0.85, shifted
    assert result.report is not None


def test_without_invertd_the_output_is_resampled_through_the_affines(tmp_path: Path) -> None:
    """A bundle that does not invert its Spacing still lands on the source slices."""
    root = write_bundle(
        tmp_path / "no_invert",
        segmentation_config(CONV_1X1X1, pixdim=(3.0, 3.0, 5.0), invert=False),
        channel_def={"0": "background", "1": "bone"},
        state_dict=threshold_weights(DENSE_HU),
    )
    phantom = make_ct_phantom(
        slices=40,
        size=112,
        pixel_spacing=2.5,
        slice_spacing=4.0,
        orientation=OBLIQUE,
        nodules=DENSE_SPHERES,
        nodule_hu=700.0,
    )
    volume = load_series(phantom.datasets)
    findings = BundlePipeline(BundleSpec(name="no-invert", path=root)).run(volume)
    [segment] = findings.segments
    assert dice(segment.mask, volume.voxels > DENSE_HU) >= 0.85


def test_channel_definition_names_the_segments_and_codes_come_from_config(
    tmp_path: Path,
) -> None:
    """Three channels (background, bone, gas): names from metadata, codes mapped or looked up."""
    weight = torch.zeros(3, 1, 1, 1, 1)
    bias = torch.zeros(3)
    weight[1, 0], bias[1] = 50.0, -50.0 * 0.3  # HU > 300 after scaling by 1/1000
    weight[2, 0], bias[2] = -50.0, -50.0 * 0.95  # HU < -950
    network = {**CONV_1X1X1, "out_channels": 3}
    root = write_bundle(
        tmp_path / "named",
        segmentation_config(network, pixdim=None),
        channel_def={"0": "background", "1": "bone", "2": "gas pocket"},
        state_dict={"weight": weight, "bias": bias},
    )
    gas_code = LabelCode(
        hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        hd.sr.CodedConcept("76067001", "SCT", "Gas"),
        color=(20, 40, 250),
    )
    spec = BundleSpec(name="named", path=root, labels={"gas pocket": gas_code})
    phantom = make_ct_phantom(slices=12, size=64, pixel_spacing=5.0, slice_spacing=8.0)
    _, written = run_bundle(BundlePipeline(spec), phantom.datasets, tmp_path / "out")
    [seg_path] = [p for p in written if p.name.startswith("SEG-")]
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    items = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    assert list(items) == ["bone", "gas pocket"]
    assert items["bone"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "272673000"  # SCT Bone
    assert items["gas pocket"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "76067001"
    shown = {
        label: hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        for label, item in items.items()
    }
    assert shown == {"bone": (241, 214, 145), "gas pocket": (20, 40, 250)}
    volume = load_series(phantom.datasets)
    masks = seg_masks(seg_path, volume)
    assert dice(masks["bone"], volume.voxels > 300) > 0.99
    assert dice(masks["gas pocket"], volume.voxels < -950) > 0.99


def test_an_unknown_label_gets_a_local_code(tmp_path: Path) -> None:
    root = write_bundle(
        tmp_path / "local",
        segmentation_config(CONV_1X1X1, pixdim=None),
        channel_def={"0": "background", "1": "dense stuff"},
        state_dict=threshold_weights(DENSE_HU),
    )
    phantom = make_ct_phantom(slices=8, size=48, pixel_spacing=6.0, slice_spacing=10.0)
    findings = BundlePipeline(BundleSpec(name="local", path=root)).run(
        load_series(phantom.datasets)
    )
    [segment] = findings.segments
    assert segment.label == "dense stuff"
    assert segment.property_type.scheme_designator == LOCAL_SCHEME


class OutOfMemoryNet(torch.nn.Module):
    """A network that fails like a full GPU: the pipeline must say so, not crash."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class CpuAllocationNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")


class BrokenNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("Given groups=1, weight of size [16, 3, 3, 3, 3], expected 3 channels")


def test_out_of_memory_and_model_errors_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_bundle(
        tmp_path / "oom",
        segmentation_config(CONV_1X1X1, pixdim=None),
        channel_def={"0": "background", "1": "bone"},
        state_dict=threshold_weights(DENSE_HU),
    )
    volume = load_series(make_ct_phantom(slices=8, size=32, pixel_spacing=8.0).datasets)
    pipeline = BundlePipeline(BundleSpec(name="oom", path=root))
    pipeline.load()
    loaded = pipeline._loaded
    assert loaded is not None
    monkeypatch.setattr(loaded, "network", OutOfMemoryNet())
    with pytest.raises(DeviceOutOfMemoryError, match="out of memory on cpu") as caught:
        pipeline.run(volume)
    assert caught.value.pipeline == "oom" and volume.series_uid in str(caught.value)
    monkeypatch.setattr(loaded, "network", CpuAllocationNet())
    with pytest.raises(DeviceOutOfMemoryError, match="can't allocate memory"):
        pipeline.run(volume)
    monkeypatch.setattr(loaded, "network", BrokenNet())
    with pytest.raises(ModelRunError, match=r"inference failed .* expected 3 channels"):
        pipeline.run(volume)
    assert pipeline.load_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_with_mixed_precision(threshold_bundle: Path) -> None:
    phantom = make_ct_phantom(
        slices=40,
        size=112,
        pixel_spacing=2.5,
        slice_spacing=4.0,
        nodules=DENSE_SPHERES,
        nodule_hu=700.0,
    )
    volume = load_series(phantom.datasets)
    pipeline = BundlePipeline(BundleSpec(name="cuda", path=threshold_bundle), device="cuda:0")
    [segment] = pipeline.run(volume).segments
    assert next(pipeline._loaded.network.parameters()).is_cuda  # type: ignore[union-attr]
    assert dice(segment.mask, volume.voxels > DENSE_HU) >= 0.93


def test_classification_bundle_puts_class_probabilities_in_the_sr(tmp_path: Path) -> None:
    """Logits from the mean scaled intensity: a phantom with more air is "mostly air"."""
    config = segmentation_config({"_target_": "tests.support.bundles.MeanClassifier"}, pixdim=None)
    del config["postprocessing"]
    weight = torch.tensor([[0.0], [-20.0]])
    bias = torch.tensor([0.0, -20.0 * 0.5])  # class 1 wins when the mean is below -0.5
    root = write_bundle(
        tmp_path / "classifier",
        config,
        channel_def={"0": "mostly tissue", "1": "mostly air"},
        state_dict={"linear.weight": weight, "linear.bias": bias},
        output_format="classification",
    )
    phantom = make_ct_phantom(slices=8, size=48, pixel_spacing=8.0, slice_spacing=10.0)
    volume = load_series(phantom.datasets)
    mean = float(np.clip(volume.voxels / 1000.0, -1, 1).mean())
    pipeline = BundlePipeline(BundleSpec(name="classes", path=root))
    findings = pipeline.run(volume)
    meanings = [c.code.meaning for c in findings.classifications]
    probabilities = [c.probability for c in findings.classifications]
    assert meanings == ["mostly tissue", "mostly air"]
    assert sum(probabilities) == pytest.approx(1.0)
    expected = 1.0 / (1.0 + np.exp(20.0 * (mean + 0.5)))
    assert probabilities[1] == pytest.approx(expected, abs=1e-4)
    result, written = run_bundle(pipeline, phantom.datasets, tmp_path / "out")
    assert result.report is not None and not any(p.name.startswith("SEG-") for p in written)
    [sr_path] = [p for p in written if p.name.startswith("SR-")]
    assert dciodvfy_errors(sr_path) == []
    concepts = [str(e.value) for e in result.report.iterall() if e.keyword == "CodeMeaning"]
    assert "mostly air" in concepts


def test_weights_that_do_not_fit_fail_the_series_with_the_reason(tmp_path: Path) -> None:
    root = write_bundle(
        tmp_path / "misfit",
        segmentation_config({**CONV_1X1X1, "out_channels": 3}, pixdim=None),
        channel_def={"0": "background", "1": "bone"},
        state_dict=threshold_weights(DENSE_HU),  # 2 output channels, not 3
    )
    phantom = make_ct_phantom(slices=8, size=32, pixel_spacing=8.0)
    folder = tmp_path / "in"
    result = annotate_study(
        _write(phantom.datasets, folder),
        rules=(RoutingRule(pipelines=("misfit",)),),
        pipelines={"misfit": BundlePipeline(BundleSpec(name="misfit", path=root))},
        software_version="9.9.9",
    )
    [failure] = result.failures
    assert failure.reason and "models/model.pt does not fit network_def" in failure.reason
