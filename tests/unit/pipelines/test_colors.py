"""Segment display colours: anatomical, given, or distinct spares."""

from __future__ import annotations

import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.colors import (
    ANATOMY_COLORS,
    KELLY_COLORS,
    MIN_DELTA_E,
    anatomical_color,
    parse_color,
    segment_colors,
)


def _rgb(wanted: list[tuple[tuple[int, int, int] | None, Code]]) -> list[tuple[int, int, int]]:
    return [color.to_rgb() for color in segment_colors(wanted)]


def test_known_structures_get_their_anatomical_colour() -> None:
    assert anatomical_color(codes.SCT.Liver) == ANATOMY_COLORS["10200004"]
    assert anatomical_color(Code("10200004", "SRT", "Liver")) == ANATOMY_COLORS["10200004"]
    assert anatomical_color(Code("10200004", "99LOCAL", "Liver")) is None
    assert anatomical_color(Code("123", "SCT", "Not in the palette")) is None


def test_unknown_structures_get_kelly_colours_in_order() -> None:
    local = [(None, Code(f"L{i}", "99PACSANN", f"thing {i}")) for i in range(3)]
    assert _rgb(local) == list(KELLY_COLORS[:3])


def test_colours_within_one_seg_are_distinct_even_for_the_same_structure() -> None:
    many = [(None, codes.SCT.Lung)] * 150
    colors = segment_colors(many)
    assert colors[0].to_rgb() == ANATOMY_COLORS[codes.SCT.Lung.value]
    # One round of spares (Kelly's colours and their shades) keeps every pair apart.
    first_round = [c.lab for c in colors[:60]]
    for i, a in enumerate(first_round):
        for b in first_round[:i]:
            assert sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5 >= MIN_DELTA_E


def test_a_given_colour_is_kept_even_when_close_to_another() -> None:
    lung = ANATOMY_COLORS[codes.SCT.Lung.value]
    assert _rgb([(None, codes.SCT.Lung), (lung, codes.SCT.Tissue)]) == [lung, lung]


@pytest.mark.parametrize("text", ["#c5a591", " #C5A591 "])
def test_parse_color(text: str) -> None:
    assert parse_color(text) == (197, 165, 145)


@pytest.mark.parametrize("text", ["c5a591", "#c5a59", "#gggggg", "red"])
def test_parse_color_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="#rrggbb"):
        parse_color(text)
