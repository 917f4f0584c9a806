"""Which pipelines run on which series: rules matched against the series' header.

Patterns are case-insensitive shell globs (``fnmatch``) because admins write them in a
config file: ``series_description="*lung*"`` is easier to get right than a regex.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class RoutingRule:
    """Run ``pipelines`` on series whose header matches every pattern given (None = any)."""

    pipelines: tuple[str, ...]
    modality: str | None = None
    series_description: str | None = None
    body_part: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pipelines, str):
            raise TypeError(
                f"RoutingRule.pipelines must be a tuple of names, not the string "
                f"{self.pipelines!r} (write ({self.pipelines!r},))"
            )
        if not self.pipelines:
            raise ValueError("RoutingRule.pipelines must name at least one pipeline")

    def matches(self, ds: Dataset) -> bool:
        return (
            _match(self.modality, ds.get("Modality"))
            and _match(self.series_description, ds.get("SeriesDescription"))
            and _match(self.body_part, ds.get("BodyPartExamined"))
        )


DEFAULT_RULES: tuple[RoutingRule, ...] = (
    RoutingRule(pipelines=("ct-basic", "ct-lung-nodules"), modality="CT"),
)


def select_pipelines(rules: Sequence[RoutingRule], ds: Dataset) -> tuple[str, ...]:
    """Pipelines of every rule matching ``ds``, in rule order, each name once."""
    selected: dict[str, None] = {}
    for rule in rules:
        if rule.matches(ds):
            selected.update(dict.fromkeys(rule.pipelines))
    return tuple(selected)


def _match(pattern: str | None, value: object) -> bool:
    """A None pattern matches anything, even a missing attribute; otherwise glob-match."""
    if pattern is None:
        return True
    text = "" if value is None else str(value)
    return fnmatch.fnmatchcase(text.casefold(), pattern.casefold())
