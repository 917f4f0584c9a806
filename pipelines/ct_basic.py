"""ct-basic: body, lungs and bone on CT from Hounsfield thresholds and morphology.

No weights, runs in seconds on CPU: it exists so the whole chain (receive, segment, write
SEG, deliver) can be exercised and demonstrated with no model, and as a sanity overlay.

Known limits (documented for radiologists reading its output):
- body: the largest connected component above ``BODY_HU``, holes filled slice by slice.
  A table or blanket touching the skin over a large area may be included.
- lungs: air-density regions (< ``AIR_HU``) inside the body, kept per 3D component when
  big enough and not mostly pure gas. Bowel gas is pure gas (about -1000 HU) and is
  dropped, but a gas pocket full of partial-volume voxels can pass; trachea and main
  bronchi are kept when they connect to a lung; severe emphysema (lots of < -950 HU
  parenchyma) can make a lung look like gas and be dropped.
- bone: >= ``BONE_HU`` inside the body with marrow filled slice-wise; small components are
  removed. Dense oral or IV contrast (and metal) above the threshold is labelled bone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from scipy import ndimage

from pipelines.findings import Algorithm, Findings, Segment
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

VERSION = "0.1.0"

BODY_HU = -500.0
AIR_HU = -400.0
PURE_GAS_HU = -950.0
BONE_HU = 300.0
#: In-plane opening radius that cuts thin bridges to the table / cables.
BODY_OPENING_MM = 4.0
#: Smallest air component kept as lung, and the largest pure-gas fraction it may have.
MIN_LUNG_ML = 20.0
MAX_LUNG_PURE_GAS_FRACTION = 0.1
#: Smallest bone component kept.
MIN_BONE_ML = 1.0

Mask = npt.NDArray[np.bool_]
Spacing = tuple[float, float, float]
_BinaryOp = Callable[..., Mask]


class CtBasicPipeline:
    """Threshold-and-morphology segmentation of body, lungs and bone on CT."""

    name = "ct-basic"
    algorithm = Algorithm(name="ct-basic", version=VERSION)
    modalities: frozenset[str] = frozenset({"CT"})

    def run(self, volume: Volume) -> Findings:
        hu = volume.voxels
        spacing = volume.spacing
        body = segment_body(hu, spacing)
        lungs = segment_lungs(hu, body, spacing)
        bone = segment_bone(hu, body, spacing)
        voxel_ml = volume.voxel_volume_mm3 / 1000.0
        logger.info(
            "ct-basic on series %s: body %.0f mL, lungs %.0f mL, bone %.0f mL",
            volume.series_uid,
            body.sum() * voxel_ml,
            lungs.sum() * voxel_ml,
            bone.sum() * voxel_ml,
        )
        anatomy = codes.SCT.AnatomicalStructure
        return Findings(
            algorithm=self.algorithm,
            segments=(
                Segment("Body", body, anatomy, codes.SCT.EntireBody),
                Segment("Lungs", lungs, anatomy, codes.SCT.Lung),
                Segment("Bone", bone, codes.SCT.Tissue, codes.SCT.Bone),
            ),
        )


def segment_body(hu: npt.NDArray[np.float32], spacing: Spacing) -> Mask:
    """Largest component above BODY_HU after a small in-plane opening, holes filled."""
    dense = hu > BODY_HU
    eroded = _in_plane(ndimage.binary_erosion, dense, BODY_OPENING_MM, spacing)
    body = _largest_component(eroded)
    # Dilating back (completing the opening) and keeping only dense voxels restores the
    # skin line exactly while thin bridges to the table stay cut.
    body = _in_plane(ndimage.binary_dilation, body, BODY_OPENING_MM + 1.0, spacing) & dense
    body = _largest_component(body)
    return _fill_slices(body)


def segment_lungs(hu: npt.NDArray[np.float32], body: Mask, spacing: Spacing) -> Mask:
    """Air-density components inside the body that look like lung, not bowel gas."""
    air = (hu < AIR_HU) & body
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros_like(body)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    pure = np.bincount(labels.ravel(), weights=(hu < PURE_GAS_HU).ravel(), minlength=count + 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = np.zeros(count + 1, dtype=bool)
    for index in range(1, count + 1):
        if sizes[index] * voxel_ml < MIN_LUNG_ML:
            continue
        if pure[index] / sizes[index] > MAX_LUNG_PURE_GAS_FRACTION:
            continue
        keep[index] = True
    lungs = keep[labels]
    # Vessels inside the lung are denser than AIR_HU: fill them in, slice by slice.
    return _fill_slices(lungs) & body


def segment_bone(hu: npt.NDArray[np.float32], body: Mask, spacing: Spacing) -> Mask:
    """Dense voxels inside the body, marrow filled, small specks removed."""
    bone = _fill_slices((hu >= BONE_HU) & body) & body
    labels, count = ndimage.label(bone)
    if count == 0:
        return bone
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    min_voxels = MIN_BONE_ML * 1000.0 / float(np.prod(spacing))
    keep = sizes >= min_voxels
    keep[0] = False
    result: Mask = keep[labels]
    return result


def _largest_component(mask: Mask) -> Mask:
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    result: Mask = labels == int(np.argmax(sizes))
    return result


def _fill_slices(mask: Mask) -> Mask:
    """Fill holes in each slice (2D), so open-ended tubes across slices still get filled.

    One labelling of the background with in-plane connectivity: the background components
    that do not reach the slice border are holes. (Much faster than a per-slice
    ``binary_fill_holes`` on 512x512 slices.)
    """
    labels, count = ndimage.label(~mask, structure=_IN_PLANE_4)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(edge)] = True
    outside[0] = False
    holes = ~outside[labels]
    holes &= labels > 0
    result: Mask = mask | holes
    return result


def _in_plane(operation: _BinaryOp, mask: Mask, radius_mm: float, spacing: Spacing) -> Mask:
    """Erode or dilate each slice by about ``radius_mm`` (octagon: cross and square steps).

    Iterated 3x3 steps are several times faster than one large disk on 512x512 slices.
    """
    steps = max(1, round(radius_mm / min(spacing[1], spacing[2])))
    result = mask
    for step in range(steps):
        structure = _IN_PLANE_4 if step % 2 == 0 else _IN_PLANE_8
        result = operation(result, structure=structure)
    return result


_IN_PLANE_4: Mask = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)
_IN_PLANE_8: Mask = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True
