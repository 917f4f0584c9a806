"""Which destinations a job's results go to, and how to reach each (DICOM or DICOMweb).

Pure functions of the settings: ``worker.processing`` applies them when it delivers.
"""

from __future__ import annotations

from collections.abc import Sequence

from scu_scp.dicomweb import DicomwebEndpoint
from worker.dicomweb_settings import DeliveryRule, DicomwebSource
from worker.settings import Destination, Settings

__all__ = ["route_by_rules", "web_endpoint"]


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
