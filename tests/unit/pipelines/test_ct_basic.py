"""ct-basic on the phantom (known truth) and on the real CT (plausibility)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from pipelines.ct_basic import VERSION, CtBasicPipeline
from pipelines.findings import Findings, Segment
from pipelines.volume import Volume, load_series
from tests.support.phantom import (
    BONE_RADIUS,
    GAS_CENTRE,
    CtPhantom,
    make_ct_phantom,
)


def _by_label(findings: Findings) -> dict[str, Segment]:
    return {segment.label: segment for segment in findings.segments}


def _ml(segment: Segment, volume: Volume) -> float:
    return float(segment.mask.sum()) * volume.voxel_volume_mm3 / 1000.0


def test_identity_and_codes(phantom_findings: Findings) -> None:
    pipeline = CtBasicPipeline()
    assert pipeline.name == "ct-basic"
    assert pipeline.modalities == frozenset({"CT"})
    assert (pipeline.algorithm.name, pipeline.algorithm.version) == ("ct-basic", VERSION)
    segments = _by_label(phantom_findings)
    assert segments["Lungs"].property_type == codes.SCT.Lung
    assert segments["Lungs"].category == codes.SCT.AnatomicalStructure
    assert segments["Body"].property_type == codes.SCT.EntireBody
    assert segments["Bone"].property_type == codes.SCT.Bone
    assert segments["Bone"].category == codes.SCT.Tissue


def test_phantom_lung_volume_within_5_percent(
    phantom: CtPhantom, phantom_volume: Volume, phantom_findings: Findings
) -> None:
    lungs = _ml(_by_label(phantom_findings)["Lungs"], phantom_volume)
    assert lungs == pytest.approx(phantom.lung_volume_ml, rel=0.05)


def test_lung_volume_does_not_depend_on_voxel_size() -> None:
    fine = make_ct_phantom(slices=80, size=176, pixel_spacing=2.0, slice_spacing=3.0)
    volume = load_series(fine.datasets)
    lungs = _ml(_by_label(CtBasicPipeline().run(volume))["Lungs"], volume)
    assert lungs == pytest.approx(fine.lung_volume_ml, rel=0.05)


def test_phantom_body_bone_and_exclusions(
    phantom_volume: Volume, phantom_findings: Findings
) -> None:
    segments = _by_label(phantom_findings)
    body, lungs, bone = (segments[name].mask for name in ("Body", "Lungs", "Bone"))
    assert _ml(segments["Body"], phantom_volume) > 5 * _ml(segments["Lungs"], phantom_volume)
    for mask in (lungs, bone):
        assert not (mask & ~body).any()
    assert not (lungs & bone).any()
    rod_ml = math.pi * BONE_RADIUS**2 * phantom_volume.voxels.shape[0] * 5.0 / 1000.0
    assert _ml(segments["Bone"], phantom_volume) == pytest.approx(rod_ml, rel=0.1)

    inverse = np.linalg.inv(phantom_volume.affine)
    gas = np.rint(inverse @ [*GAS_CENTRE, 1]).astype(int)[:3]
    assert body[tuple(gas)], "bowel gas lies inside the body"
    assert not lungs[tuple(gas)], "bowel gas must not be labelled lung"
    table_row = np.rint(inverse @ [0.0, 120.0, 0.0, 1]).astype(int)[1]
    assert not body[:, table_row, :].any(), "the table is not part of the body"


def test_real_ct_is_plausible(real_volume: Volume, real_findings: Findings) -> None:
    segments = _by_label(real_findings)
    body, lungs, bone = (segments[name] for name in ("Body", "Lungs", "Bone"))
    body_ml, lungs_ml, bone_ml = (_ml(s, real_volume) for s in (body, lungs, bone))
    assert body_ml > 5000
    assert 200 < lungs_ml < body_ml / 4
    assert bone_ml > 50
    for segment in (lungs, bone):
        assert not (segment.mask & ~body.mask).any()
    # Lung bases sit in the superior slices only; the inferior abdomen has bowel gas.
    toward_head = real_volume.affine[2, 0] > 0  # z of the slice step (LPS: +z is superior)
    lung_slices = np.flatnonzero(lungs.mask.any(axis=(1, 2)))
    inferior_half = range(0, 20) if toward_head else range(21, 41)
    assert not set(lung_slices) & set(inferior_half)
