"""Values passed between the DICOM edge and the rest of the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scu_scp.security import ClientTls


@dataclass(frozen=True)
class DicomNode:
    """A DICOM application entity reachable over the network (over TLS when ``tls`` is set)."""

    ae_title: str
    host: str
    port: int
    tls: ClientTls | None = None


@dataclass(frozen=True)
class SpooledStudy:
    """A complete study, sealed in the spool: its files no longer change.

    ``path`` holds ``<series_uid>/<sop_instance_uid>.dcm`` files as received.
    """

    batch_id: str
    study_uid: str
    path: Path
    calling_ae: str
    calling_host: str
    first_received: datetime
    last_received: datetime
    instance_count: int


@dataclass(frozen=True)
class InstanceResult:
    """The outcome of sending one instance: DIMSE status 0x0000 is success."""

    sop_instance_uid: str
    sop_class_uid: str
    status: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, 0xB000, 0xB007, 0xB006)


@dataclass(frozen=True)
class DeliveryResult:
    """What one destination made of a batch of instances."""

    destination: str
    instances: tuple[InstanceResult, ...]

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.instances)

    @property
    def failed(self) -> tuple[InstanceResult, ...]:
        return tuple(i for i in self.instances if not i.ok)


class DeliveryError(Exception):
    """The destination could not be reached or refused the association (worth retrying)."""
