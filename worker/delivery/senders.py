"""How to reach a destination: its C-STORE node (with DICOM TLS) or its DICOMweb endpoint.

Certificates and keys are loaded once at start-up (``check_destination_tls``), so a wrong
path or a key that does not match its certificate stops the command with the setting
named, not the first delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset

from scu_scp.dicomweb import DicomwebEndpoint
from scu_scp.models import DeliveryResult, DicomNode
from scu_scp.scu import send_datasets
from scu_scp.security import ClientTls, TlsConfigError, client_ssl_context
from worker.config import Destination, DicomwebSource, Settings, SettingsError

Sender = Callable[[DicomNode, Sequence[Dataset]], DeliveryResult]
WebSender = Callable[[DicomwebEndpoint, Sequence[Dataset]], DeliveryResult]

__all__ = [
    "Sender",
    "WebSender",
    "check_destination_tls",
    "destination_node",
    "make_sender",
    "web_endpoint",
]


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


def web_endpoint(target: Destination | DicomwebSource, timeout: float) -> DicomwebEndpoint:
    """The protocol-level view of a configured DICOMweb source or destination."""
    if target.url is None:
        raise ValueError("not a DICOMweb node: url is not set")
    auth = target.auth
    return DicomwebEndpoint(
        url=target.url,
        auth=auth.type,
        username=auth.username,
        password=auth.password.get_secret_value(),
        token=auth.token.get_secret_value(),
        verify_tls=target.verify_tls,
        ca_bundle=str(target.ca_bundle) if target.ca_bundle else None,
        timeout=timeout,
    )


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


def make_sender(settings: Settings) -> Sender:
    """C-STORE as this service's AE title, with the delivery timeout; TLS files checked now."""
    check_destination_tls(settings)

    def send(node: DicomNode, datasets: Sequence[Dataset]) -> DeliveryResult:
        return send_datasets(
            node,
            datasets,
            calling_ae=settings.scp.ae_title,
            timeout=settings.delivery.timeout_seconds,
        )

    return send
