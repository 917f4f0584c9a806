"""ct-lung-nodules: solid lung lesions on CT, 5 mm nodules to 10 cm masses, classically.

No weights, runs in seconds on CPU. It is a classical candidate detector, not a diagnosis:
it exists so the detection path (findings -> TID 1500 SR -> PACS) runs end to end with
no model, and as a baseline that a learned detector must beat.

How:
1. The lungs come from ct-basic (air-density regions inside the body, holes filled slice
   by slice). A lesion touching the chest wall, mediastinum, hilum or diaphragm is not
   enclosed by lung on its slices, so the search region is the lung *envelope*: on each
   slice, the convex hull of each lung region, inside the body.
2. Voxels denser than ``SOLID_HU`` in the envelope are candidates; an in-plane opening of
   ``OPENING_MM`` cuts thin vessels, spicules and the bridges between a lesion and the
   vessels that touch it; the 3D connected components are grown back by one voxel step.
3. Each component is measured (volume, equivalent-sphere and longest diameter, elongation
   from its second moments, compactness, mean HU, the share of its surface on aerated
   lung) and kept when it is lesion-sized, round and dense enough and mostly surrounded by
   lung. Its category follows its longest diameter: nodule below ``MASS_DIAMETER_MM``
   (3 cm), mass at or above it.
4. Fragments are merged: a kept component that comes within ``MERGE_FRACTION`` of the
   equivalent diameter (``MERGE_MIN_MM`` to ``MERGE_MAX_MM``) of a bigger kept one joins it, so one
   lesion is one finding, whatever its shape. The score (0..1) grows with roundness, compactness,
   density and size; it is a ranking, not a calibrated probability of malignancy.

Known limits (documented for radiologists reading its output):
- vessels: a vessel cut obliquely or crossing few thick slices looks like a round blob and
  is reported (the main source of false positives, more with thick slices).
- attached lesions: the envelope is a convex hull per slice, so the part of a lesion that
  bulges into the chest wall or mediastinum beyond the line joining the lung edges on
  either side is not counted: its size is then underestimated. A lesion that is mostly
  outside the lung envelope (e.g. a mediastinal mass with little lung contact) is missed.
- on the lung's concave faces (heart, hilum, liver dome under the lung base) the hull
  includes soft tissue; a compact structure there can be reported as a mass. Consolidation
  and atelectasis that fill a lobe look like a mass.
- ground-glass and part-solid nodules: below ``SOLID_HU`` they are missed or measured by
  their solid part only.
- lesions smaller than ``MIN_DIAMETER_MM`` (or than a few voxels) and larger than
  ``MAX_DIAMETER_MM`` are not reported; diameters are from voxels, so on thick slices the
  cranio-caudal extent is coarse.
- two lesions closer than ``MERGE_MAX_MM`` to each other are reported as one.
- findings in the lungs only; bowel, liver or other lesions are out of scope.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage
from scipy.spatial.distance import pdist
from skimage.morphology import convex_hull_image

from pipelines.ct_basic import segment_body, segment_lungs
from pipelines.findings import Algorithm, Detection, Findings
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

VERSION = "0.2.0"

#: Voxels denser than this inside the lung envelope are lesion (or vessel) candidates.
SOLID_HU = -400.0
#: In-plane opening radius that detaches vessels thinner than about twice this.
OPENING_MM = 1.5
MIN_DIAMETER_MM = 3.0
#: Largest longest diameter reported: a 10 cm mass with lobules bulging out of it; the
#: structures above this that the envelope can hold (liver dome, heart) are not lesions.
MAX_DIAMETER_MM = 130.0
#: Longest diameter from which a lesion is a mass, not a nodule (Fleischner glossary).
MASS_DIAMETER_MM = 30.0
#: Ratio of the longest to the shortest principal axis; a sphere is 1, a vessel 3+.
MAX_ELONGATION = 2.2
#: Volume over the volume of the sphere spanning the longest diameter; a sphere is 1.
MIN_COMPACTNESS = 0.3
#: Mean HU of a component: partial-volume rims of airways and fissures stay below this.
MIN_MEAN_HU = -300.0
#: Smallest share of a lesion's surface that touches aerated lung (a free nodule: ~1,
#: a mass against the chest wall: ~0.5); soft tissue that the envelope cut off the chest
#: wall or mediastinum touches lung on one side only.
MIN_LUNG_CONTACT = 0.3
#: Lung regions smaller than this on a slice (mm^2) get no hull of their own.
MIN_HULL_AREA_MM2 = 50.0
#: Fragments within this fraction of a lesion's equivalent diameter join it, at least
#: within ``MERGE_MIN_MM`` and at most within ``MERGE_MAX_MM`` (two lesions closer than
#: that are reported as one).
MERGE_FRACTION = 0.1
MERGE_MIN_MM = 3.0
MERGE_MAX_MM = 6.0
#: A fragment of at least this share of the lesion's volume adds to its size; a smaller
#: one (a spicule's tip, a partial-volume speck) is only dropped.
MERGE_PART_FRACTION = 0.1
#: Reported at most, best scores first (a report listing hundreds helps nobody).
MAX_DETECTIONS = 20

RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
LEFT_LUNG = Code("44029006", "SCT", "Left lung")
NODULE = codes.SCT.Nodule
MASS = codes.SCT.Mass

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
    min_lung_contact: float = MIN_LUNG_CONTACT
    envelope: bool = True
    merge_fragments: bool = True
    shape_filter: bool = True


#: Plain threshold + connected components + size filter inside the filled lung mask.
THRESHOLD_PEER = DetectorSettings(
    opening_mm=0.0,
    min_mean_hu=-math.inf,
    min_lung_contact=0.0,
    envelope=False,
    merge_fragments=False,
    shape_filter=False,
)


@dataclass(frozen=True)
class Candidate:
    """One kept lesion, measured in patient millimetres."""

    centre_mm: tuple[float, float, float]
    bbox_min_mm: tuple[float, float, float]
    bbox_max_mm: tuple[float, float, float]
    volume_mm3: float
    equivalent_diameter_mm: float
    longest_diameter_mm: float
    elongation: float
    compactness: float
    mean_hu: float
    lung_contact: float
    score: float

    @property
    def is_mass(self) -> bool:
        return self.longest_diameter_mm >= MASS_DIAMETER_MM


class CtLungNodulesPipeline:
    """Classical solid lung lesion (nodule and mass) detection on CT."""

    name = "ct-lung-nodules"
    algorithm = Algorithm(name="ct-lung-nodules", version=VERSION)
    modalities: frozenset[str] = frozenset({"CT"})

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()

    def run(self, volume: Volume) -> Findings:
        body = segment_body(volume.voxels, volume.spacing)
        lungs = segment_lungs(volume.voxels, body, volume.spacing)
        candidates = detect_nodules(volume.voxels, lungs, volume.affine, self.settings, body)
        reported = candidates[:MAX_DETECTIONS]
        numbers = {True: 0, False: 0}
        detections = []
        for candidate in reported:
            numbers[candidate.is_mass] += 1
            kind = "Mass" if candidate.is_mass else "Nodule"
            detections.append(
                Detection(
                    label=f"{kind} {numbers[candidate.is_mass]}",
                    finding_type=MASS if candidate.is_mass else NODULE,
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
            )
        logger.info(
            "ct-lung-nodules on series %s: %d candidate(s), %d reported (%d mass(es))",
            volume.series_uid,
            len(candidates),
            len(detections),
            numbers[True],
        )
        return Findings(algorithm=self.algorithm, detections=tuple(detections))


def detect_nodules(
    hu: npt.NDArray[np.float32],
    lungs: Mask,
    affine: npt.NDArray[np.float64],
    settings: DetectorSettings | None = None,
    body: Mask | None = None,
) -> list[Candidate]:
    """Lesion candidates (nodules and masses) around ``lungs``, best score first."""
    settings = settings or DetectorSettings()
    spacing = _spacing(affine)
    box = ndimage.find_objects(lungs.astype(np.uint8))
    if not box or box[0] is None:
        return []
    crop = box[0]
    lung_crop = lungs[crop]
    region = lung_crop
    if settings.envelope:
        region = lung_envelope(lung_crop, spacing)
        if body is not None:
            region &= body[crop]
    hu_crop = hu[crop]
    solid = (hu_crop > settings.solid_hu) & region
    aerated = lung_crop & ~solid
    labels = _label_candidates(solid, settings.opening_mm, spacing)
    near_air = ndimage.binary_dilation(aerated, structure=_CONNECT_6)
    offset = np.array([s.start for s in crop], dtype=np.float64)

    boxes = ndimage.find_objects(labels)

    def measure(index: int) -> Candidate | None:
        found = boxes[index - 1]
        if found is None:
            return None
        mask = labels[found] == index
        return _measure(mask, hu_crop[found], near_air[found], found, offset, affine)

    kept: dict[int, Candidate] = {}
    for index in range(1, len(boxes) + 1):
        candidate = measure(index)
        if candidate is not None and _keep(candidate, settings):
            kept[index] = candidate
    if settings.merge_fragments:
        kept = _merge_fragments(labels, boxes, kept, spacing, measure)
    candidates = [replace(c, score=_score(c, settings)) for c in kept.values()]
    candidates.sort(key=lambda c: (-c.score, c.centre_mm))
    return candidates


def lung_envelope(lungs: Mask, spacing: Spacing) -> Mask:
    """Per slice, the convex hull of each lung region (regions too small to matter: as is).

    The hull closes the bite that a lesion against the chest wall, mediastinum or
    diaphragm takes out of the lung's outline on the slice: the lesion is then inside.
    """
    min_pixels = MIN_HULL_AREA_MM2 / (spacing[1] * spacing[2])
    envelope = lungs.copy()
    for k in range(lungs.shape[0]):
        if not lungs[k].any():
            continue
        labels, _ = ndimage.label(lungs[k])
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None:
                continue
            part = labels[found] == index
            if part.sum() >= min_pixels:
                envelope[k][found] |= convex_hull_image(part)  # type: ignore[no-untyped-call]
    return envelope


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


def _merge_fragments(
    labels: npt.NDArray[np.int32],
    boxes: list[tuple[slice, ...] | None],
    kept: dict[int, Candidate],
    spacing: Spacing,
    measure: Callable[[int], Candidate | None],
) -> dict[int, Candidate]:
    """One finding per lesion: kept components near a bigger kept one join it (biggest first).

    A spiculated lesion, or one the opening split, comes out as one big component with
    smaller ones around it. A piece of at least ``MERGE_PART_FRACTION`` of the lesion's
    volume is merged into it (``labels`` and ``boxes`` are updated, the lesion measured
    again); a
    smaller one is dropped, so a spicule does not change the lesion's size. Components the
    filters rejected (vessels) are not involved: a nodule beside a vessel stays itself.
    """
    order = sorted(kept, key=lambda i: -kept[i].volume_mm3)
    absorbed: set[int] = set()
    grown: set[int] = set()
    for index in order:
        if index in absorbed:
            continue
        reach_mm = min(
            MERGE_MAX_MM,
            max(MERGE_MIN_MM, MERGE_FRACTION * kept[index].equivalent_diameter_mm),
        )
        found = boxes[index - 1]
        if found is None:
            continue
        pad = [math.ceil(reach_mm / s) for s in spacing]
        window = tuple(
            slice(max(0, b.start - p), min(n, b.stop + p))
            for b, p, n in zip(found, pad, labels.shape, strict=True)
        )
        local = labels[window]
        distance = ndimage.distance_transform_edt(local != index, sampling=spacing)
        for other in np.unique(local[(distance <= reach_mm) & (local > 0)]):
            other = int(other)
            if other == index or other not in kept or other in absorbed:
                continue
            if kept[other].volume_mm3 > kept[index].volume_mm3:
                continue
            absorbed.add(other)
            if kept[other].volume_mm3 >= MERGE_PART_FRACTION * kept[index].volume_mm3:
                piece = boxes[other - 1]
                if piece is None:
                    continue
                labels[piece][labels[piece] == other] = index
                boxes[index - 1] = _union(boxes[index - 1], piece)
                grown.add(index)
    result = {i: c for i, c in kept.items() if i not in absorbed}
    for index in grown:
        merged = measure(index)
        if merged is not None:
            result[index] = merged
    return result


def _union(one: tuple[slice, ...] | None, other: tuple[slice, ...]) -> tuple[slice, ...]:
    if one is None:
        return other
    return tuple(
        slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(one, other, strict=True)
    )


def _measure(
    mask: Mask,
    hu: npt.NDArray[np.float32],
    near_air: Mask,
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
    surface = _surface(mask)
    longest = _longest_diameter(surface, mask, points, matrix)
    equivalent = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    longest = max(longest, equivalent)
    half_voxel = 0.5 * np.abs(matrix).sum(axis=1)
    surface_count = int(surface.sum())
    contact = float((surface & near_air).sum()) / surface_count if surface_count else 0.0
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
        lung_contact=contact,
        score=0.0,
    )


def _surface(mask: Mask) -> Mask:
    """Voxels of ``mask`` with a 6-neighbour outside it (the crop's edge counts as outside)."""
    padded = np.pad(mask, 1)
    inner = ndimage.binary_erosion(padded, structure=_CONNECT_6)[1:-1, 1:-1, 1:-1]
    result: Mask = mask & ~inner
    return result


def _longest_diameter(
    surface: Mask, mask: Mask, points: npt.NDArray[np.float64], matrix: npt.NDArray[np.float64]
) -> float:
    """Largest distance between surface voxel centres, plus half a voxel at each end."""
    edge = points[surface[mask]]
    if len(edge) < 2:
        edge = points
    if len(edge) > 4000:  # bounded cost for big lesions: a regular subsample of the surface
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
    if candidate.lung_contact < settings.min_lung_contact:
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
