"""nnU-Net pipelines: model folders planned by nnunetv2, constructed weights, run to SEG.

The geometry proof: the model computes a known intensity threshold (tests/support/nnunet.py).
nnU-Net resamples the series to its plans' 5 mm spacing and back, so the SEG read back
from the written file must match the threshold evaluated on the original slices, on an
axial and a sagittal series, and must not match it flipped along any axis.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch

from pipelines.bundle_outputs import LOCAL_SCHEME
from pipelines.errors import DeviceOutOfMemoryError, ModelRunError
from pipelines.nnunet import NnunetPipeline, NnunetSpec
from pipelines.nnunet_files import ModelFolder, NnunetModelError
from pipelines.volume import load_series
from tests.support.dicom_validate import dciodvfy_errors
from tests.support.nnunet import (
    THRESHOLD_HU,
    TOTALSEG_LABEL_1,
    NnunetModels,
    placeholder_model_folder,
    threshold_phantom,
)
from tests.unit.pipelines.test_bundle import dice, run_bundle, seg_masks
from worker.config import load_settings
from worker.run.bundles import configured_pipelines

pytest.importorskip("nnunetv2", reason="nnU-Net pipelines need the nnunet extra")


@pytest.fixture(scope="module")
def threshold_pipeline(nnunet_models: NnunetModels) -> NnunetPipeline:
    """One pipeline object for the module: it must load its model once for every series."""
    # Test-time mirroring off: eight times fewer network passes on a CPU.
    return NnunetPipeline(
        NnunetSpec(
            name="dense-nnunet",
            folders=(ModelFolder(nnunet_models.model_folder),),
            use_mirroring=False,
        )
    )


@pytest.mark.parametrize("orientation", ["axial", "sagittal"])
def test_seg_matches_the_threshold_on_the_original_slices(
    threshold_pipeline: NnunetPipeline, tmp_path: Path, orientation: str
) -> None:
    datasets = threshold_phantom(orientation)
    volume = load_series(datasets)
    pipeline = threshold_pipeline
    result, written = run_bundle(pipeline, datasets, tmp_path)  # type: ignore[arg-type]
    [seg_path] = [p for p in written if p.name.startswith("SEG-")]
    for path in written:
        assert dciodvfy_errors(path) == [], path.name
    masks = seg_masks(seg_path, volume)
    assert list(masks) == ["dense"]
    truth = volume.voxels > THRESHOLD_HU
    assert truth.sum() > 1000, "the phantom must contain the dense structures"
    score = dice(masks["dense"], truth)
    assert score >= 0.9, f"Dice {score:.3f} against the threshold on the original slices"
    # The check can fail: a reversed axis or an offset of two voxels costs far more.
    flipped = [dice(masks["dense"], np.flip(truth, axis=axis)) for axis in range(3)]
    assert max(flipped) < 0.9, flipped
    shifted = [dice(masks["dense"], np.roll(truth, 2, axis=axis)) for axis in range(3)]
    assert min(shifted) < 0.85, shifted
    assert result.report is not None
    assert pipeline.load_count == 1  # loaded by the first series, warm for the second


def test_a_corrupt_checkpoint_fails_the_series_with_the_reason(
    nnunet_models: NnunetModels,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(nnunet_models.model_folder, folder)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    pipeline = NnunetPipeline(NnunetSpec(name="broken", folders=(ModelFolder(folder),)))
    with pytest.raises(NnunetModelError, match=r"model .*model cannot be loaded \(folds 0"):
        pipeline.load()
    volume = load_series(threshold_phantom("axial"))
    with pytest.raises(ModelRunError, match="cannot be loaded"):
        pipeline.run(volume)
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelRunError, match=r"fold 0 has no weights \(expected .*checkpoint_final"):
        NnunetPipeline(NnunetSpec(name="gone", folders=(ModelFolder(folder),))).run(volume)


def test_totalsegmentator_task_gives_coded_coloured_segments(
    nnunet_models: NnunetModels,
    tmp_path: Path,
) -> None:
    settings = load_settings(
        None,
        data_dir=tmp_path,
        pipelines={
            "totalseg": {
                "kind": "totalsegmentator",
                "task": "total",
                "mode": "fastest",
                "weights_dir": str(nnunet_models.totalseg_weights),
            }
        },
    )
    pipeline = configured_pipelines(settings)["totalseg"]
    assert isinstance(pipeline, NnunetPipeline)
    assert pipeline.spec.orientation == "RAS"  # as TotalSegmentator feeds its models
    assert pipeline.spec.use_mirroring is False
    datasets = threshold_phantom("axial")
    volume = load_series(datasets)
    _, written = run_bundle(pipeline, datasets, tmp_path)  # type: ignore[arg-type]
    [seg_path] = [p for p in written if p.name.startswith("SEG-")]
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    [segment] = seg.SegmentSequence  # empty labels are not written
    assert segment.SegmentLabel == TOTALSEG_LABEL_1
    prop = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (prop.CodeValue, prop.CodingSchemeDesignator) == ("78961009", "SCT")  # spleen
    spleen_rgb = (50, 170, 60)  # TotalSegmentator's published colour for spleen
    expected_lab = hd.color.CIELabColor.from_rgb(*spleen_rgb).value
    assert tuple(segment.RecommendedDisplayCIELabValue) == tuple(expected_lab)
    masks = seg_masks(seg_path, volume)
    assert dice(masks[TOTALSEG_LABEL_1], volume.voxels > THRESHOLD_HU) >= 0.9


def test_label_names_are_coded_from_settings_totalsegmentator_or_snomed(
    tmp_path: Path,
) -> None:
    from pydicom.sr.codedict import codes

    from pipelines.bundle_outputs import LabelCode

    given = LabelCode(codes.SCT.Tissue, codes.SCT.Liver, (1, 2, 3))
    pipeline = NnunetPipeline(
        NnunetSpec(
            name="codes",
            folders=(ModelFolder(placeholder_model_folder(tmp_path / "model")),),
            labels={"dense": given},
        )
    )
    assert pipeline.code("dense") is given
    kidney = pipeline.code("kidney_left")
    assert (kidney.property_type.value, kidney.color) == ("64033007", (46, 138, 184))
    assert pipeline.modifier("kidney_left") == codes.SCT.Left  # laterality as published
    assert pipeline.modifier("liver") is None
    assert pipeline.code("liver").property_type.value == "10200004"
    assert pipeline.code("lung").property_type.value == "39607008"  # SNOMED dictionary
    assert pipeline.code("blob").property_type.scheme_designator == LOCAL_SCHEME


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory"), DeviceOutOfMemoryError),
        (RuntimeError("shapes do not match"), ModelRunError),
        (ValueError("cannot crop"), ModelRunError),
    ],
)
def test_inference_errors_fail_the_series_with_the_reason(
    threshold_pipeline: NnunetPipeline,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    expected: type[Exception],
) -> None:
    threshold_pipeline.load()
    assert threshold_pipeline._models is not None

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    predictor = threshold_pipeline._models[0].predictor
    monkeypatch.setattr(predictor, "predict_single_npy_array", fail)
    volume = load_series(threshold_phantom("axial"))
    with pytest.raises(expected, match=str(error)):
        threshold_pipeline.run(volume)
