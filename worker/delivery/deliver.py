"""Delivering one job's results to every destination chosen for it.

A job goes to each destination as a whole (SEG and SR together), so references between
them always resolve at the receiver. Failures that may pass (destination down, refused
instances) raise :class:`TransientDeliveryError`; the task retries with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from scu_scp.models import DeliveryError, DeliveryResult
from worker.config import Destination, Settings
from worker.delivery.destinations import choose_destinations
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
) -> list[dict[str, Any]]:
    """Send ``outputs`` to each chosen destination; one record per delivered instance.

    Raises NoDestinationError (configuration) or TransientDeliveryError (retry later).
    """
    delivered: list[dict[str, Any]] = []
    modalities = [str(o.get("modality") or "") for o in outcomes]
    pipelines = [str(o.get("pipeline") or "") for o in outcomes if o.get("status") != "failed"]
    for name, dest in choose_destinations(
        settings, calling_ae, modalities=modalities, pipelines=pipelines
    ):
        try:
            result = _send_to(settings, dest, outputs, send, send_web)
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
            }
            for i in result.instances
        ]
        log.info("job %s: delivered %d instances to %s", job_id, len(result.instances), name)
    return delivered
