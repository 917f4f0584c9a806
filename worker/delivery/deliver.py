"""Delivering one job's results to every destination chosen for it.

Each destination gets the kinds of result object it asks for (``outputs``), all of them in
one go, so references between them resolve at the receiver. Failures that may pass
(destination down, refused instances) raise :class:`TransientDeliveryError`; the task
retries with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from pipelines.output_kinds import output_kind
from scu_scp.models import DeliveryError, DeliveryResult
from worker.config import Destination, Settings
from worker.delivery.destinations import plan_deliveries
from worker.delivery.senders import Sender, WebSender, destination_node, web_endpoint

log = logging.getLogger(__name__)


class TransientDeliveryError(Exception):
    """Delivery failed in a way that may succeed later (destination down, refused instances)."""


def _send_to(
    settings: Settings,
    dest: Destination,
    outputs: Sequence[Dataset],
    send: Sender,
    send_web: WebSender,
) -> DeliveryResult:
    """C-STORE or STOW-RS by the destination's type; both give per-instance results."""
    if dest.type == "dicomweb":
        return send_web(web_endpoint(dest, settings.delivery.timeout_seconds), outputs)
    return send(destination_node(dest), outputs)


def deliver(
    settings: Settings,
    job_id: str,
    calling_ae: str,
    outputs: Sequence[Dataset],
    outcomes: Sequence[dict[str, Any]],
    *,
    send: Sender,
    send_web: WebSender,
    kinds: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Send each chosen destination the ``outputs`` of the kinds it receives; one record
    per delivered instance.

    ``kinds`` are the outputs' kinds as the results folder recorded them (None: from
    their SOP classes). Raises NoDestinationError (configuration) or
    TransientDeliveryError (retry later).
    """
    delivered: list[dict[str, Any]] = []
    if kinds is None:
        kinds = [output_kind(ds) for ds in outputs]
    kind_of = {str(ds.SOPInstanceUID): kind for ds, kind in zip(outputs, kinds, strict=True)}
    modalities, pipelines = delivery_facts(outcomes)
    for plan in plan_deliveries(settings, calling_ae, modalities=modalities, pipelines=pipelines):
        name, dest = plan.name, plan.destination
        selected = [ds for ds, kind in zip(outputs, kinds, strict=True) if kind in plan.outputs]
        if not selected:
            log.info(
                "job %s: nothing of %s to deliver to %s", job_id, ", ".join(plan.outputs), name
            )
            continue
        try:
            result = _send_to(settings, dest, selected, send, send_web)
        except DeliveryError as exc:
            raise TransientDeliveryError(f"destination {name}: {exc}") from exc
        if result.failed:
            first = result.failed[0]
            raise TransientDeliveryError(
                f"destination {name} refused {len(result.failed)} of {len(result.instances)} "
                f"instances (first: {first.sop_instance_uid}: {first.error})"
            )
        delivered += [
            {
                "destination": name,
                "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "kind": kind_of.get(i.sop_instance_uid, ""),
            }
            for i in result.instances
        ]
        log.info("job %s: delivered %d instances to %s", job_id, len(result.instances), name)
    return delivered


def delivery_facts(outcomes: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """What delivery rules match on: the study's modalities, the pipelines that did not fail."""
    modalities = [str(o.get("modality") or "") for o in outcomes]
    pipelines = [str(o.get("pipeline") or "") for o in outcomes if o.get("status") != "failed"]
    return modalities, pipelines
