"""ct-lung-nodules: candidate solid lung nodules on CT from density, size and shape.

No weights, runs in seconds on CPU. It is a classical candidate detector, not a diagnosis:
it exists so the detection path (findings -> TID 1500 SR -> PACS) runs end to end with
no model, and as a baseline that a learned detector must beat.

How: the lungs come from ct-basic (air-density regions inside the body, holes filled slice
by slice, so anything enclosed by lung on a slice is inside the mask). Inside them, voxels
denser than ``SOLID_HU`` are candidates; an in-plane opening of ``OPENING_MM`` cuts thin
vessels and the bridges between a nodule and the vessels that touch it; each 3D connected
component is then measured (volume, equivalent-sphere and longest diameter, elongation
from its second moments, compactness, mean HU) and kept when it is nodule-sized, round
and dense enough. The score (0..1) grows with roundness, compactness, density and size; it
is a ranking, not a calibrated probability of malignancy.

Known limits (documented for radiologists reading its output):
- vessels: a vessel cut obliquely or crossing few thick slices looks like a round blob and
  is reported (the main source of false positives, more with thick slices); a nodule
  merged with a thick vessel can be dropped as elongated.
- wall-attached (juxtapleural) and juxtamediastinal nodules: they are not enclosed by lung
  on their slices, so they are outside the lung mask and are not reported.
- ground-glass and part-solid nodules: below ``SOLID_HU`` they are missed or measured by
  their solid part only.
- nodules smaller than ``MIN_DIAMETER_MM`` (or than a few voxels) and masses larger than
  ``MAX_DIAMETER_MM`` are not reported; diameters are from voxels, so on thick slices the
  cranio-caudal extent is coarse.
- findings in the lungs only; bowel, liver or other lesions are out of scope.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage
from scipy.spatial.distance import pdist

from pipelines.ct_basic import segment_body, segment_lungs
from pipelines.findings import Algorithm, Detection, Findings
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

VERSION = "0.1.0"

#: Voxels denser than this inside the lungs are nodule (or vessel) candidates.
SOLID_HU = -400.0
#: In-plane opening radius that detaches vessels thinner than about twice this.
OPENING_MM = 1.5
MIN_DIAMETER_MM = 3.0
MAX_DIAMETER_MM = 30.0
#: Ratio of the longest to the shortest principal axis; a sphere is 1, a vessel 3+.
MAX_ELONGATION = 2.2
#: Volume over the volume of the sphere spanning the longest diameter; a sphere is 1.
MIN_COMPACTNESS = 0.3
#: Mean HU of a component: partial-volume rims of airways and fissures stay below this.
MIN_MEAN_HU = -300.0
#: Reported at most, best scores first (a report listing hundreds helps nobody).
MAX_DETECTIONS = 20

RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
LEFT_LUNG = Code("44029006", "SCT", "Left lung")

Mask = npt.NDArray[np.bool_]
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class DetectorSettings:
    """The filters of the detector; the benchmark turns some off to build its peer."""

    solid_hu: float = SOLID_HU
    opening_mm: float = OPENING_MM
    min_diameter_mm: float = MIN_DIAMETER_MM
    max_diameter_mm: float = MAX_DIAMETER_MM
    max_elongation: float = MAX_ELONGATION
    min_compactness: float = MIN_COMPACTNESS
    min_mean_hu: float = MIN_MEAN_HU
    shape_filter: bool = True


#: Plain threshold + connected components + size filter: the peer the benchmark compares to.
THRESHOLD_PEER = DetectorSettings(opening_mm=0.0, min_mean_hu=-math.inf, shape_filter=False)


@dataclass(frozen=True)
class Candidate:
    """One kept component, measured in patient millimetres."""

    centre_mm: tuple[float, float, float]
    bbox_min_mm: tuple[float, float, float]
    bbox_max_mm: tuple[float, float, float]
    volume_mm3: float
    equivalent_diameter_mm: float
    longest_diameter_mm: float
    elongation: float
    compactness: float
    mean_hu: float
    score: float


class CtLungNodulesPipeline:
    """Classical solid lung nodule candidate detection on CT."""

    name = "ct-lung-nodules"
    algorithm = Algorithm(name="ct-lung-nodules", version=VERSION)
    modalities: frozenset[str] = frozenset({"CT"})

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()

    def run(self, volume: Volume) -> Findings:
        body = segment_body(volume.voxels, volume.spacing)
        lungs = segment_lungs(volume.voxels, body, volume.spacing)
        candidates = detect_nodules(volume.voxels, lungs, volume.affine, self.settings)
        detections = tuple(
            Detection(
                label=f"Nodule {number}",
                finding_type=codes.SCT.Nodule,
                centre_mm=candidate.centre_mm,
                bbox_min_mm=candidate.bbox_min_mm,
                bbox_max_mm=candidate.bbox_max_mm,
                # Reported at the precision a reader needs (and a DS value holds exactly).
                longest_diameter_mm=round(candidate.longest_diameter_mm, 2),
                volume_mm3=round(candidate.volume_mm3, 1),
                score=candidate.score,
                # LPS: +x points to the patient's left, whatever the patient position.
                finding_site=LEFT_LUNG if candidate.centre_mm[0] > 0 else RIGHT_LUNG,
            )
            for number, candidate in enumerate(candidates[:MAX_DETECTIONS], start=1)
        )
        logger.info(
            "ct-lung-nodules on series %s: %d candidate(s), %d reported",
            volume.series_uid,
            len(candidates),
            len(detections),
        )
        return Findings(algorithm=self.algorithm, detections=detections)


def detect_nodules(
    hu: npt.NDArray[np.float32],
    lungs: Mask,
    affine: npt.NDArray[np.float64],
    settings: DetectorSettings | None = None,
) -> list[Candidate]:
    """Nodule candidates inside ``lungs``, best score first (ties: by position)."""
    settings = settings or DetectorSettings()
    spacing = _spacing(affine)
    box = ndimage.find_objects(lungs.astype(np.uint8))
    if not box or box[0] is None:
        return []
    crop = box[0]
    solid = (hu[crop] > settings.solid_hu) & lungs[crop]
    labels = _label_candidates(solid, settings.opening_mm, spacing)
    offset = np.array([s.start for s in crop], dtype=np.float64)
    candidates = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        candidate = _measure(labels[region] == index, hu[crop][region], region, offset, affine)
        if candidate is not None and _keep(candidate, settings):
            candidates.append(replace(candidate, score=_score(candidate, settings)))
    candidates.sort(key=lambda c: (-c.score, c.centre_mm))
    return candidates


def _label_candidates(solid: Mask, opening_mm: float, spacing: Spacing) -> npt.NDArray[np.int32]:
    """Components of the opened mask, grown back by one voxel step (3D) into ``solid``.

    The opening detaches vessels; growing back one step restores the rim and the small
    end slices the opening shaved off a nodule (so its size and shape are not
    underestimated) without merging components (each voxel takes one neighbour's label).
    """
    steps = round(opening_mm / min(spacing[1], spacing[2])) if opening_mm > 0 else 0
    opened = solid
    if steps:
        opened = ndimage.binary_opening(solid, structure=_IN_PLANE_4, iterations=steps)
    labels, _ = ndimage.label(opened, structure=_CONNECT_26)
    if steps:
        grown = ndimage.grey_dilation(labels, footprint=_CONNECT_26)
        labels = np.where(solid & (labels == 0), grown, labels)
    result: npt.NDArray[np.int32] = labels.astype(np.int32)
    return result


def _measure(
    mask: Mask,
    hu: npt.NDArray[np.float32],
    region: tuple[slice, ...],
    offset: npt.NDArray[np.float64],
    affine: npt.NDArray[np.float64],
) -> Candidate | None:
    indices = np.argwhere(mask).astype(np.float64)
    count = len(indices)
    if count < 2:
        return None
    indices += offset + np.array([s.start for s in region], dtype=np.float64)
    matrix, origin = affine[:3, :3], affine[:3, 3]
    points = indices @ matrix.T + origin
    voxel_mm3 = abs(float(np.linalg.det(matrix)))
    volume = count * voxel_mm3
    centre = points.mean(axis=0)
    # Second moments of the solid voxels (each voxel a box, not a point) give the axes.
    covariance = np.cov(points, rowvar=False) + matrix @ np.diag([1 / 12] * 3) @ matrix.T
    eigen = np.clip(np.linalg.eigvalsh(covariance), 1e-9, None)
    elongation = math.sqrt(float(eigen[-1] / eigen[0]))
    longest = _longest_diameter(mask, points, matrix)
    equivalent = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    longest = max(longest, equivalent)
    half_voxel = 0.5 * np.abs(matrix).sum(axis=1)
    return Candidate(
        centre_mm=_triple(centre),
        bbox_min_mm=_triple(points.min(axis=0) - half_voxel),
        bbox_max_mm=_triple(points.max(axis=0) + half_voxel),
        volume_mm3=volume,
        equivalent_diameter_mm=equivalent,
        longest_diameter_mm=longest,
        elongation=elongation,
        compactness=volume / (math.pi / 6.0 * longest**3),
        mean_hu=float(hu[mask].mean(dtype=np.float64)),
        score=0.0,
    )


def _longest_diameter(
    mask: Mask, points: npt.NDArray[np.float64], matrix: npt.NDArray[np.float64]
) -> float:
    """Largest distance between surface voxel centres, plus half a voxel at each end."""
    surface = mask & ~ndimage.binary_erosion(mask, structure=_CONNECT_6)
    edge = points[surface[mask]]
    if len(edge) < 2:
        edge = points
    if len(edge) > 4000:  # bounded cost for big components (rejected on size anyway)
        edge = edge[:: len(edge) // 4000 + 1]
    distances = pdist(edge)
    best = int(np.argmax(distances))
    # Recover the pair of the best distance to add the voxel extent along its direction.
    i, j = _pair_from_condensed(best, len(edge))
    direction = edge[j] - edge[i]
    length = float(np.linalg.norm(direction))
    unit = direction / length
    voxel_extent = float(np.abs(unit @ matrix).sum())
    return length + 0.5 * voxel_extent


def _pair_from_condensed(index: int, n: int) -> tuple[int, int]:
    """Row and column of ``index`` in a ``pdist`` condensed matrix of ``n`` points."""
    i = int(n - 2 - math.floor(math.sqrt(-8 * index + 4 * n * (n - 1) - 7) / 2.0 - 0.5))
    j = int(index + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2)
    return i, j


def _keep(candidate: Candidate, settings: DetectorSettings) -> bool:
    if candidate.equivalent_diameter_mm < settings.min_diameter_mm:
        return False
    if candidate.longest_diameter_mm > settings.max_diameter_mm:
        return False
    if candidate.mean_hu < settings.min_mean_hu:
        return False
    if not settings.shape_filter:
        return True
    return (
        candidate.elongation <= settings.max_elongation
        and candidate.compactness >= settings.min_compactness
    )


def _score(candidate: Candidate, settings: DetectorSettings) -> float:
    """0..1 from roundness, compactness, density and size (a ranking, not a probability)."""
    roundness = _ramp(candidate.elongation, settings.max_elongation + 0.3, 1.0)
    compact = _ramp(candidate.compactness, settings.min_compactness - 0.1, 0.8)
    density = _ramp(candidate.mean_hu, -450.0, -50.0)
    size = _ramp(candidate.equivalent_diameter_mm, settings.min_diameter_mm - 1.0, 8.0)
    score = 0.35 * roundness + 0.25 * compact + 0.2 * density + 0.2 * size
    return round(min(1.0, max(0.0, score)), 4)


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at ``zero_at``, 1 at ``one_at`` (either direction), linear between, clipped."""
    fraction = (value - zero_at) / (one_at - zero_at)
    return min(1.0, max(0.0, fraction))


def _spacing(affine: npt.NDArray[np.float64]) -> Spacing:
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])


def _triple(values: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


_CONNECT_6: Mask = ndimage.generate_binary_structure(3, 1)
_CONNECT_26: Mask = ndimage.generate_binary_structure(3, 3)
_IN_PLANE_4: Mask = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)
