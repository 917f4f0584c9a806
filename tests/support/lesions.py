"""Chest phantoms with lung lesions of known place, size and shape, free or attached.

Used by the detector's tests and by ``bench/detection_phantom.py``. The lungs are the
adult-sized ``LARGE_LUNGS`` (12 x 14 x 22 cm), so a 10 cm mass fits; the grid is 1.5 mm
pixels and 2.5 mm slices, what a chest CT reconstruction for nodules commonly has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tests.support.phantom import (
    LARGE_LUNGS,
    CtPhantom,
    Lesion,
    LesionShape,
    Vessel,
    attached_centre,
    make_ct_phantom,
    make_lesion,
)

#: Where an attached lesion touches: the direction from the lung's centre (right lung;
#: x is mirrored for the left one). "hilum" is medial and a little anterior at mid-height.
WALLS: dict[str, tuple[float, float, float]] = {
    "chest wall": (-1.0, 0.0, 0.0),
    "mediastinum": (1.0, 0.0, 0.0),
    "hilum": (1.0, -0.4, 0.15),
    "diaphragm": (0.0, 0.0, 1.0),
}
#: Share of an attached lesion's diameter that lies inside the lung.
ATTACHED_INSIDE = 0.8


def attached_lesion(
    size_mm: float, wall: str, side: int, shape: LesionShape, rng: np.random.Generator
) -> Lesion:
    """A lesion of ``size_mm`` against ``wall`` of lung ``side`` (0 right, 1 left)."""
    direction = np.array(WALLS[wall])
    if side == 1:
        direction[0] = -direction[0]
    centre = attached_centre(LARGE_LUNGS, side, direction, size_mm, ATTACHED_INSIDE)
    return make_lesion(centre, size_mm, shape, rng)


def free_lesion(
    size_mm: float,
    shape: LesionShape,
    rng: np.random.Generator,
    avoid: Sequence[Lesion] = (),
) -> Lesion:
    """A lesion of ``size_mm`` inside a lung, clear of its edge and of ``avoid``."""
    margin = size_mm * 0.8 + 6.0
    for _ in range(10_000):
        point = rng.uniform([-140.0, -70.0, -110.0], [140.0, 70.0, 110.0])
        if not LARGE_LUNGS.contains(point, margin):
            continue
        if all(_clear(point, size_mm, other) for other in avoid):
            return make_lesion(point, size_mm, shape, rng)
    raise ValueError(f"no room for a free {size_mm} mm lesion")


def _clear(point: np.ndarray, size_mm: float, other: Lesion) -> bool:
    # Lobes and spicules reach up to 1.1 diameters from the centre: keep the two apart.
    gap = 0.6 * (size_mm + other.diameter) * 1.1 + 10.0
    return bool(np.linalg.norm(point - np.array(other.centre)) > gap)


def make_lesion_phantom(
    lesions: Sequence[Lesion], *, seed: int = 0, vessels: Sequence[Vessel] = ()
) -> CtPhantom:
    """The phantom with ``lesions`` painted (all their lobes and spicules) and ``vessels``."""
    return make_ct_phantom(
        slices=92,
        size=256,
        pixel_spacing=1.5,
        slice_spacing=2.5,
        seed=seed,
        lungs=LARGE_LUNGS,
        nodules=[part for lesion in lesions for part in lesion.parts],
        vessels=[*vessels, *(s for lesion in lesions for s in lesion.spicules)],
    )
