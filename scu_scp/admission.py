"""Admission at the DICOM edge: who may associate, and whether the spool has room.

Checked when the A-ASSOCIATE-RQ arrives (pynetdicom's EVT_REQUESTED), before any data is
accepted: an unknown caller is rejected permanently ("calling AE title not recognised"), a
full spool disk transiently ("temporary congestion"), so the PACS keeps the study and
retries later. Per-instance limits are checked by the C-STORE handler.

Logs carry the calling AE title and peer address only.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt

from scu_scp.connections import AssociationSlots
from scu_scp.security import CallerPolicy

__all__ = [
    "Admission",
    "ScpLimits",
    "free_disk_bytes",
    "handle_requested",
    "refuse_over_limits",
    "refused",
]

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, presentation provider, temporary congestion
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, presentation provider, local limit exceeded
_OUT_OF_RESOURCES = 0xA700


@dataclass(frozen=True)
class ScpLimits:
    """Resource limits of the SCP; 0 disables a limit."""

    max_instance_bytes: int = 0
    max_study_bytes: int = 0
    min_free_disk_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("max_instance_bytes", "max_study_bytes", "min_free_disk_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = no limit)")


def free_disk_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the filesystem holding ``path``."""
    return int(shutil.disk_usage(path).free)


@dataclass(frozen=True)
class Admission:
    """What an association request is checked against."""

    policy: CallerPolicy
    spool_root: Path
    limits: ScpLimits
    slots: AssociationSlots | None = None  # scp.max_associations; None: pynetdicom's count

    def disk_too_full(self) -> int | None:
        """Free bytes when under ``min_free_disk_bytes`` (or unknown: -1), else None."""
        if self.limits.min_free_disk_bytes <= 0:
            return None
        try:
            free = free_disk_bytes(self.spool_root)
        except OSError:
            return -1  # cannot tell: do not accept data we may not be able to keep
        return free if free < self.limits.min_free_disk_bytes else None


def _reject(event: Any, rsd: tuple[int, int, int]) -> None:
    assoc = event.assoc
    assoc.acse.send_reject(*rsd)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handle_requested(event: Any, admission: Admission) -> None:
    """EVT_REQUESTED: reject unknown callers, callers over ``scp.max_associations`` and,
    while the spool disk is full, everyone."""
    assoc = event.assoc
    calling = str(assoc.requestor.primitive.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    if not admission.policy.allows(calling, address):
        LOGGER.warning(
            "association from %s@%s rejected: calling AE title not in scp.allowed_callers",
            calling,
            address,
        )
        _reject(event, REJECT_CALLING_AE)
        return
    if admission.slots is not None and not admission.slots.take(assoc):
        LOGGER.warning(
            "association from %s@%s rejected: %d associations open (scp.max_associations)",
            calling,
            address,
            admission.slots.maximum,
        )
        _reject(event, REJECT_LOCAL_LIMIT)
        return
    free = admission.disk_too_full()
    if free is not None:
        LOGGER.error(
            "association from %s@%s rejected: spool disk has %s bytes free, "
            "below scp.min_free_disk_bytes (%d)",
            calling,
            address,
            "unknown" if free < 0 else free,
            admission.limits.min_free_disk_bytes,
        )
        _reject(event, REJECT_CONGESTION)


def refused(comment: str) -> Dataset:
    """0xA700 with a reason the PACS shows its admin (Error Comment is LO: 64 characters)."""
    status = Dataset()
    status.Status = _OUT_OF_RESOURCES
    status.ErrorComment = comment[:64]
    return status


def refuse_over_limits(size: int, admission: Admission | None, calling_ae: str) -> Dataset | None:
    """C-STORE: a refusal when the instance is too large or the spool disk too full, else None.

    ``size`` is the dataset's size as it decodes (inflated, if deflated); an instance
    passing ``max_instance_bytes`` while still arriving has been stopped before (see
    ``scu_scp.received.SizeGuard``).
    """
    if admission is None:
        return None
    limits = admission.limits
    if limits.max_instance_bytes and size > limits.max_instance_bytes:
        LOGGER.warning(
            "C-STORE from %s refused: %d bytes exceed scp.max_instance_bytes (%d)",
            calling_ae,
            size,
            limits.max_instance_bytes,
        )
        return refused(f"instance {size} B over scp.max_instance_bytes")
    if admission.disk_too_full() is not None:
        LOGGER.error(
            "C-STORE from %s refused: spool disk below scp.min_free_disk_bytes", calling_ae
        )
        return refused("spool disk full (scp.min_free_disk_bytes)")
    return None
