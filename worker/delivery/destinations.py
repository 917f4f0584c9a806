"""Which destinations a job's results go to: the delivery rules, then the fallbacks.

Pure functions of the settings; ``worker.delivery.deliver`` applies them.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.config import DeliveryRule, Destination, Settings

__all__ = ["NoDestinationError", "choose_destinations", "route_by_rules"]


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

    A job goes to every destination as a whole (SEG and SR together), so references
    between them always resolve at the receiver.
    """
    names: list[str] = []
    for rule in settings.delivery.rules:
        if _matches(rule, calling_ae, modalities, pipelines):
            names += rule.to
    if not names and calling_ae in settings.sources:
        names += settings.sources[calling_ae].deliver_to
    return list(dict.fromkeys(names))


def choose_destinations(
    settings: Settings,
    calling_ae: str,
    *,
    modalities: Sequence[str] = (),
    pipelines: Sequence[str] = (),
) -> list[tuple[str, Destination]]:
    """Where results go: matching ``delivery.rules``, else the source's ``deliver_to``, else
    ``delivery.to``, else the caller's own node, else the default."""
    routed = route_by_rules(settings, calling_ae, modalities=modalities, pipelines=pipelines)
    if routed:
        return [(name, settings.destinations[name]) for name in routed]
    if settings.delivery.to:
        return [(name, settings.destinations[name]) for name in settings.delivery.to]
    for name, dest in settings.destinations.items():
        if dest.ae_title == calling_ae:
            return [(name, dest)]
    for name, dest in settings.destinations.items():
        if dest.default:
            return [(name, dest)]
    raise NoDestinationError(
        f"no destination for calling AE {calling_ae!r}: configure a destination with that "
        "AE title, mark one as default, or set delivery.to"
    )
