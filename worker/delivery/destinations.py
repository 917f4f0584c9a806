"""Which destinations a job's results go to: the delivery rules, then the fallbacks.

Pure functions of the settings; ``worker.delivery.deliver`` applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.output_kinds import OUTPUT_KINDS
from worker.config import DeliveryRule, Destination, Settings

__all__ = [
    "Delivery",
    "NoDestinationError",
    "choose_destinations",
    "needed_outputs",
    "plan_deliveries",
    "route_by_rules",
]


@dataclass(frozen=True)
class Delivery:
    """One destination of a job and the output kinds it receives (in build order)."""

    name: str
    destination: Destination
    outputs: tuple[str, ...]


class NoDestinationError(Exception):
    """No configured destination matches the job: a configuration problem, not retried."""


def _matches(
    rule: DeliveryRule, calling_ae: str, modalities: Sequence[str], pipelines: Sequence[str]
) -> bool:
    if rule.source is not None and rule.source != calling_ae:
        return False
    if rule.modality is not None and rule.modality.upper() not in {m.upper() for m in modalities}:
        return False
    return not rule.pipelines or bool(set(rule.pipelines) & set(pipelines))


def route_by_rules(
    settings: Settings,
    calling_ae: str,
    *,
    modalities: Sequence[str] = (),
    pipelines: Sequence[str] = (),
) -> list[str]:
    """Destination names from every matching ``delivery.rules`` entry (in order, once each),
    else from the ``deliver_to`` of the source the job was pulled from; [] if neither applies.

    A job goes to every destination as a whole (all the kinds it receives together), so
    references between them always resolve at the receiver.
    """
    return list(_routed(settings, calling_ae, modalities, pipelines))


def _routed(
    settings: Settings, calling_ae: str, modalities: Sequence[str], pipelines: Sequence[str]
) -> dict[str, set[str]]:
    """Routed destination names, each with the kinds its matching rules give it."""
    routed: dict[str, set[str]] = {}
    for rule in settings.delivery.rules:
        if _matches(rule, calling_ae, modalities, pipelines):
            for name in rule.to:
                kinds = rule.outputs or _own_outputs(settings, name)
                routed.setdefault(name, set()).update(kinds)
    if not routed and calling_ae in settings.sources:
        for name in settings.sources[calling_ae].deliver_to:
            routed.setdefault(name, set()).update(_own_outputs(settings, name))
    return routed


def _own_outputs(settings: Settings, name: str) -> tuple[str, ...]:
    return settings.destinations[name].outputs or settings.delivery.outputs


def plan_deliveries(
    settings: Settings,
    calling_ae: str,
    *,
    modalities: Sequence[str] = (),
    pipelines: Sequence[str] = (),
) -> list[Delivery]:
    """Where results go and what each destination receives: matching ``delivery.rules``
    (their ``outputs``, else the destination's), else the source's ``deliver_to``, else
    ``delivery.to``, else the caller's own node, else the default; a destination's own
    ``outputs``, else ``delivery.outputs``.
    """
    routed = _routed(settings, calling_ae, modalities, pipelines)
    if routed:
        return [
            Delivery(name, settings.destinations[name], _ordered(kinds))
            for name, kinds in routed.items()
        ]
    names = list(settings.delivery.to)
    if not names:
        names = [n for n, d in settings.destinations.items() if d.ae_title == calling_ae][:1]
    if not names:
        names = [n for n, d in settings.destinations.items() if d.default][:1]
    if not names:
        raise NoDestinationError(
            f"no destination for calling AE {calling_ae!r}: configure a destination with that "
            "AE title, mark one as default, or set delivery.to"
        )
    return [
        Delivery(name, settings.destinations[name], _ordered(_own_outputs(settings, name)))
        for name in names
    ]


def choose_destinations(
    settings: Settings,
    calling_ae: str,
    *,
    modalities: Sequence[str] = (),
    pipelines: Sequence[str] = (),
) -> list[tuple[str, Destination]]:
    """The destinations of ``plan_deliveries``, without what each receives."""
    plan = plan_deliveries(settings, calling_ae, modalities=modalities, pipelines=pipelines)
    return [(delivery.name, delivery.destination) for delivery in plan]


def needed_outputs(
    settings: Settings,
    calling_ae: str,
    *,
    modalities: Sequence[str] = (),
    pipelines: Sequence[str] = (),
) -> tuple[str, ...]:
    """Every kind some destination of the job receives: what the job must build.

    A job without a destination builds ``delivery.outputs`` (its delivery then fails with
    the reason, and a retry after the settings are fixed sends what was built).
    """
    try:
        plan = plan_deliveries(settings, calling_ae, modalities=modalities, pipelines=pipelines)
    except NoDestinationError:
        return settings.delivery.outputs
    return _ordered({kind for delivery in plan for kind in delivery.outputs})


def _ordered(kinds: set[str] | Sequence[str]) -> tuple[str, ...]:
    return tuple(kind for kind in OUTPUT_KINDS if kind in kinds)
