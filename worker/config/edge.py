"""Settings of the DICOM receiver: where it listens, whom it accepts, its limits, completion."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from scu_scp.security import parse_network
from worker.config.base import GIB, Section, check_ae_title


class AllowedCallerSettings(Section):
    """A calling AE title the SCP accepts, optionally only from an IP address or network."""

    ae_title: str
    host: str | None = None

    _ae = field_validator("ae_title")(check_ae_title)

    @field_validator("host")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            parse_network(value)
        return value


class ScpTlsSettings(Section):
    """DICOM TLS for the SCP (PEM files); loaded when the SCP starts."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ScpTlsSettings:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


#: ``scp.processes: 0`` uses one receiving process per core up to this many (measured on
#: 2 cores: 2 processes took 1.5-1.8x the one-sender rate from 16 senders, 3 did no better).
AUTO_MAX_PROCESSES = 4


class ScpSettings(Section):
    """Where the annotator listens for the PACS, whom it accepts, and its limits."""

    ae_title: str = "PACS_ANNOTATOR"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_callers: tuple[AllowedCallerSettings, ...] = ()
    tls: ScpTlsSettings | None = None
    max_associations: int = Field(default=10, ge=1, le=1000)
    max_instance_bytes: int = Field(default=2 * GIB, ge=0)
    max_study_bytes: int = Field(default=20 * GIB, ge=0)
    min_free_disk_bytes: int = Field(default=1 * GIB, ge=0)
    # Connections (scu_scp/connections.py): a connection must bring its A-ASSOCIATE-RQ within
    # associate_request_timeout_seconds of being accepted, each later PDU must arrive within
    # pdu_timeout_seconds of its first byte; one address holds at most
    # max_connections_per_address connections at once (0: no limit).
    associate_request_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    pdu_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_connections_per_address: int = Field(default=5, ge=0, le=1000)
    # Processes receiving on the port (scu_scp/receivers.py): more than 1 lets concurrent
    # senders use more than one core. 0: one per CPU core, at most AUTO_MAX_PROCESSES.
    processes: int = Field(default=0, ge=0, le=64)

    _ae = field_validator("ae_title")(check_ae_title)

    @property
    def receiver_processes(self) -> int:
        """``processes``, with 0 resolved to this machine's cores (at most 4)."""
        if self.processes:
            return self.processes
        return max(1, min(AUTO_MAX_PROCESSES, len(os.sched_getaffinity(0))))


class CompletionSettings(Section):
    """When a study counts as complete (``scu_scp/completion.py``).

    ``release_grace_seconds`` after the last association that carried it was released, with
    no instance since; or, always, after ``quiet_seconds`` with no new instance. Calling AE
    titles matching ``quiet_only_aets`` (globs; ``"*"``: everyone) get the quiet period only.
    """

    quiet_seconds: float = Field(default=30.0, gt=0, le=86400)
    release_grace_seconds: float = Field(default=5.0, gt=0, le=86400)
    quiet_only_aets: tuple[str, ...] = ()

    @field_validator("quiet_only_aets")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_ae_title(pattern) for pattern in value)
