"""Routing rules: case-insensitive globs, None matches anything, union in rule order."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pipelines.routing import DEFAULT_RULES, RoutingRule, select_pipelines


def _ds(modality: str, description: str | None = None, body_part: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    if description is not None:
        ds.SeriesDescription = description
    if body_part is not None:
        ds.BodyPartExamined = body_part
    return ds


def test_default_rules_send_ct_to_ct_basic_only() -> None:
    assert select_pipelines(DEFAULT_RULES, _ds("CT")) == ("ct-basic", "ct-lung-nodules")
    assert select_pipelines(DEFAULT_RULES, _ds("SEG")) == ()
    assert select_pipelines(DEFAULT_RULES, _ds("MR")) == ()


def test_globs_are_case_insensitive() -> None:
    rule = RoutingRule(pipelines=("lung",), series_description="*LUNG*", body_part="ch?st")
    assert rule.matches(_ds("CT", "Thorax lung 1.0 B70f", "CHEST"))
    assert not rule.matches(_ds("CT", "Thorax lung", "ABDOMEN"))
    assert not rule.matches(_ds("CT", "Abdomen", "CHEST"))


def test_pattern_does_not_match_a_missing_attribute_but_none_does() -> None:
    assert not RoutingRule(pipelines=("x",), body_part="*CHEST*").matches(_ds("CT"))
    assert RoutingRule(pipelines=("x",), body_part=None).matches(_ds("CT"))
    assert RoutingRule(pipelines=("x",), body_part="*").matches(_ds("CT"))


def test_union_in_rule_order_without_duplicates() -> None:
    rules = [
        RoutingRule(pipelines=("b", "a"), modality="ct"),
        RoutingRule(pipelines=("c",), modality="MR"),
        RoutingRule(pipelines=("a", "d"), series_description="*liver*"),
    ]
    assert select_pipelines(rules, _ds("CT", "Liver arterial")) == ("b", "a", "d")
    assert select_pipelines(rules, _ds("MR", "liver")) == ("c", "a", "d")


def test_rule_refuses_a_bare_string_or_nothing() -> None:
    with pytest.raises(TypeError, match="tuple of names"):
        RoutingRule(pipelines="ct-basic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        RoutingRule(pipelines=())
