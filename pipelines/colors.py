"""Recommended display colours for segments: anatomical where the structure is known.

Viewers (OHIF, 3D Slicer, dcmqi) paint a SEG segment in its RecommendedDisplayCIELabValue
and fall back to one colour for all segments without it. So every segment gets one:
1. the colour the pipeline gives (for a bundle, the setting
   ``pipelines.NAME.labels.LABEL.color``);
2. else the anatomical colour of its segmented property type, following 3D Slicer's
   GenericAnatomyColors table (so a radiologist sees lungs, bone and liver in the colours
   Slicer users know);
3. else the next of Kelly's colours of maximum contrast (K. L. Kelly, "Twenty-two colors
   of maximum contrast", 1965; white and black left out).
Within one SEG, a colour too close to one already taken is replaced by the next Kelly
colour, so the segments of one object are always told apart.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.coding import Code

RGB = tuple[int, int, int]

#: SNOMED CT code value -> sRGB, after 3D Slicer's GenericAnatomyColors.
ANATOMY_COLORS: dict[str, RGB] = {
    "38266002": (128, 174, 128),  # Entire body: soft tissue, as "tissue"
    "39937001": (177, 122, 101),  # Skin
    "272673000": (241, 214, 145),  # Bone
    "39607008": (197, 165, 145),  # Lung
    "3341006": (197, 165, 145),  # Right lung
    "44029006": (197, 165, 145),  # Left lung
    "10200004": (221, 130, 101),  # Liver
    "78961009": (157, 108, 162),  # Spleen
    "64033007": (185, 102, 83),  # Kidney
    "15776009": (249, 180, 111),  # Pancreas
    "69695003": (216, 132, 105),  # Stomach
    "28231008": (139, 150, 98),  # Gallbladder
    "89837001": (222, 154, 132),  # Urinary bladder
    "80891009": (206, 110, 84),  # Heart
    "15825003": (224, 97, 76),  # Aorta
    "59820001": (216, 101, 79),  # Blood vessel
    "51114001": (216, 101, 79),  # Artery
    "29092000": (0, 151, 206),  # Vein
    "32849002": (211, 171, 143),  # Esophagus
    "44567001": (182, 228, 255),  # Trachea
    "71854001": (204, 168, 143),  # Colon
    "30315005": (205, 167, 142),  # Small intestine
    "12738006": (250, 250, 225),  # Brain
    "2748008": (244, 214, 49),  # Spinal cord
    "51185008": (241, 213, 144),  # Vertebra (thoracic); bones share the bone hue
    "113197003": (253, 232, 158),  # Rib
    "91727004": (192, 104, 88),  # Muscle
    "68887009": (230, 220, 70),  # Adipose tissue (fat)
    "85756007": (128, 174, 128),  # Tissue
    "59441001": (68, 172, 100),  # Lymph node
    "4147007": (144, 238, 144),  # Mass
    "27925004": (144, 238, 144),  # Nodule
    "52988006": (144, 238, 144),  # Lesion
    "108369006": (144, 238, 144),  # Neoplasm
}

#: Kelly's colours of maximum contrast, without white and black.
KELLY_COLORS: tuple[RGB, ...] = (
    (243, 195, 0),
    (135, 86, 146),
    (243, 132, 0),
    (161, 202, 241),
    (190, 0, 50),
    (194, 178, 128),
    (132, 132, 130),
    (0, 136, 86),
    (230, 143, 172),
    (0, 103, 165),
    (249, 147, 121),
    (96, 78, 151),
    (246, 166, 0),
    (179, 68, 108),
    (220, 211, 0),
    (136, 45, 23),
    (141, 182, 0),
    (101, 69, 34),
    (226, 88, 34),
    (43, 61, 38),
)

#: CIE76 colour difference below which two segments would look the same next to each other.
MIN_DELTA_E = 12.0


def anatomical_color(property_type: Code) -> RGB | None:
    """The palette's colour for a SNOMED CT structure, or None when it has none."""
    if property_type.scheme_designator not in ("SCT", "SRT"):
        return None
    return ANATOMY_COLORS.get(property_type.value)


def parse_color(text: str) -> RGB:
    """An sRGB colour from ``#rrggbb`` (the form the settings take); ValueError otherwise."""
    value = text.strip()
    if len(value) != 7 or not value.startswith("#"):
        raise ValueError(f"colour {text!r} is not of the form #rrggbb")
    try:
        return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
    except ValueError as exc:
        raise ValueError(f"colour {text!r} is not of the form #rrggbb") from exc


def segment_colors(wanted: Sequence[tuple[RGB | None, Code]]) -> list[hd.color.CIELabColor]:
    """One CIELab colour per segment, from (given colour or None, property type).

    Given colours are kept as they are; the others are made distinct from those before them.
    """
    return [hd.color.CIELabColor.from_rgb(*color) for color in segment_rgb(wanted)]


def segment_rgb(wanted: Sequence[tuple[RGB | None, Code]]) -> list[RGB]:
    """The sRGB colours ``segment_colors`` encodes (RTSTRUCT ROIs take them as they are)."""
    chosen: list[RGB] = []
    spare = itertools.cycle(_spare_colors())
    for given, property_type in wanted:
        color = given or anatomical_color(property_type)
        if color is None or (given is None and _too_close(color, chosen)):
            color = _next_distinct(spare, chosen)
        chosen.append(color)
    return chosen


def _next_distinct(spare: Iterator[RGB], chosen: Sequence[RGB]) -> RGB:
    """The next spare colour unlike those chosen; past one round of them, any next one."""
    for _ in range(len(_spare_colors())):
        color = next(spare)
        if not _too_close(color, chosen):
            return color
    return next(spare)


def _too_close(color: RGB, others: Iterable[RGB]) -> bool:
    lab = _lab(color)
    return any(float(np.linalg.norm(lab - _lab(other))) < MIN_DELTA_E for other in others)


@functools.cache
def _lab(color: RGB) -> npt.NDArray[np.float64]:
    return np.array(hd.color.CIELabColor.from_rgb(*color).lab, dtype=np.float64)


@functools.cache
def _spare_colors() -> tuple[RGB, ...]:
    """Kelly's colours, then the same hues darker and lighter, for SEGs of many segments."""
    shades = [
        (min(255, round(r * f)), min(255, round(g * f)), min(255, round(b * f)))
        for f in (0.7, 1.3, 0.5)
        for r, g, b in KELLY_COLORS
    ]
    return (*KELLY_COLORS, *shades)
