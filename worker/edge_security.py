"""Settings -> the DICOM edge's security and limit values, checked when a component starts.

Certificates and keys are loaded here once at start-up, so a wrong path or a key that does
not match its certificate stops the command with the setting named, not the first PACS call.
"""

from __future__ import annotations

from typing import Any

from scu_scp.admission import ScpLimits
from scu_scp.models import DicomNode
from scu_scp.security import (
    AllowedCaller,
    ClientTls,
    ServerTls,
    TlsConfigError,
    client_ssl_context,
    server_ssl_context,
)
from worker.settings import Destination, Settings, SettingsError

__all__ = ["check_destination_tls", "destination_node", "scp_options"]


def scp_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of StorageSCP for allow-list, TLS and limits."""
    scp = settings.scp
    tls: ServerTls | None = None
    if scp.tls is not None:
        tls = ServerTls(
            certificate=scp.tls.certificate,
            private_key=scp.tls.private_key,
            ca_certificates=scp.tls.ca_certificates,
            require_client_certificate=scp.tls.require_client_certificate,
        )
        try:
            server_ssl_context(tls, what="scp.tls")
        except TlsConfigError as exc:
            raise SettingsError(f"invalid settings: {exc}") from exc
    return {
        "allowed_callers": tuple(AllowedCaller(c.ae_title, c.host) for c in scp.allowed_callers),
        "tls": tls,
        "max_associations": scp.max_associations,
        "limits": ScpLimits(
            max_instance_bytes=scp.max_instance_bytes,
            max_study_bytes=scp.max_study_bytes,
            min_free_disk_bytes=scp.min_free_disk_bytes,
        ),
    }


def _client_tls(dest: Destination) -> ClientTls | None:
    if dest.tls is None:
        return None
    return ClientTls(
        ca_certificates=dest.tls.ca_certificates,
        certificate=dest.tls.certificate,
        private_key=dest.tls.private_key,
        check_hostname=dest.tls.check_hostname,
    )


def destination_node(dest: Destination) -> DicomNode:
    """The C-STORE peer of a ``type: dicom`` destination, with its TLS settings."""
    if dest.ae_title is None or dest.host is None or dest.port is None:
        raise ValueError("not a DICOM destination: ae_title, host and port are required")
    return DicomNode(dest.ae_title, dest.host, dest.port, tls=_client_tls(dest))


def check_destination_tls(settings: Settings) -> None:
    """Load every destination's TLS files now; SettingsError names the destination."""
    for name, dest in settings.destinations.items():
        tls = _client_tls(dest)
        if tls is None:
            continue
        try:
            client_ssl_context(tls, what=f"destinations.{name}.tls")
        except TlsConfigError as exc:
            raise SettingsError(f"invalid settings: {exc}") from exc
