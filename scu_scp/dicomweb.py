"""DICOMweb client: STOW-RS delivery, QIDO-RS search and WADO-RS retrieval via dicomweb-client.

Foreign errors (requests/HTTP) are mapped here, at the boundary: a send that cannot happen
raises :class:`DeliveryError`, a search or fetch that cannot happen raises :class:`FetchError`,
both naming the HTTP status and the URL ("401 Unauthorized from https://..."). Per-instance
outcomes of STOW-RS come from the response's Failed SOP / Referenced SOP sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from io import BytesIO
from typing import Any, Literal

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from scu_scp.models import DeliveryError, DeliveryResult, InstanceResult
from scu_scp.redact import redact_credentials

__all__ = [
    "QIDO_PAGE_SIZE",
    "DicomwebEndpoint",
    "FetchError",
    "RetrievedInstance",
    "fetch_study",
    "search_studies",
    "store_datasets",
]

LOGGER = logging.getLogger(__name__)

AuthKind = Literal["none", "basic", "bearer"]

# Status codes of a STOW-RS Failed SOP Sequence item with no FailureReason: "processing failure".
_PROCESSING_FAILURE = 0x0110
#: Studies asked for per QIDO-RS request.
QIDO_PAGE_SIZE = 100
# Any transfer syntax the server holds: pull instances as stored, no transcoding.
_AS_STORED = (("application/dicom", "*"),)


class FetchError(Exception):
    """A DICOMweb search or retrieval failed (server down, refused, unknown study)."""


@dataclass(frozen=True)
class DicomwebEndpoint:
    """Where a DICOMweb service is and how to authenticate; secrets never appear in repr."""

    url: str
    auth: AuthKind = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    verify_tls: bool = True
    ca_bundle: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class RetrievedInstance:
    """One instance pulled by WADO-RS, re-encoded as a Part 10 file for the spool."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes


class _RawWildcards(requests.adapters.HTTPAdapter):
    """Sends ``*`` in query strings as is: RFC 3986 allows it there, and some servers
    (Orthanc 1.10) do not decode ``%2A``, so a QIDO-RS wildcard match would find nothing."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if request.url and "?" in request.url:
            path, query = request.url.split("?", 1)
            request.url = f"{path}?{query.replace('%2A', '*')}"
        return super().send(request, stream, timeout, verify, cert, proxies)


def _client(endpoint: DicomwebEndpoint) -> DICOMwebClient:
    session = requests.Session()
    session.mount("http://", _RawWildcards())
    session.mount("https://", _RawWildcards())
    session.trust_env = False  # no proxy from the environment to a hospital-internal archive
    if endpoint.auth == "basic":
        session.auth = (endpoint.username, endpoint.password)
    elif endpoint.auth == "bearer":
        session.headers["Authorization"] = f"Bearer {endpoint.token}"
    session.verify = endpoint.ca_bundle if endpoint.ca_bundle else endpoint.verify_tls
    client = DICOMwebClient(url=endpoint.url, session=session, timeout=endpoint.timeout)
    # Retries belong to the job (backoff, then a failed job with the reason), not to HTTP.
    client.set_http_retry_params(retry=False)
    return client


def _http_reason(exc: requests.RequestException, endpoint: DicomwebEndpoint) -> str:
    """Status and URL of a failed request, without credentials a URL may carry."""
    return redact_credentials(_unredacted_reason(exc, endpoint))


def _unredacted_reason(exc: requests.RequestException, endpoint: DicomwebEndpoint) -> str:
    response = exc.response
    if response is not None:
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:
            phrase = response.reason or "error"
        return f"{response.status_code} {phrase} from {response.url or endpoint.url}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS verification failed for {endpoint.url}: {exc}"
    if isinstance(exc, requests.Timeout):
        return f"no answer from {endpoint.url} within {endpoint.timeout:.0f} s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {endpoint.url}"
    return f"request to {endpoint.url} failed: {exc}"


# -- STOW-RS -------------------------------------------------------------------------------


def _status_of(item: Dataset) -> int:
    reason = item.get("FailureReason")
    return int(reason) if reason is not None else _PROCESSING_FAILURE


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The STOW-RS response body (DICOM JSON) of an error answer, if it has one."""
    if response is None or not response.content:
        return None
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return None
    try:
        return Dataset.from_json(body)
    except (ValueError, TypeError, KeyError):
        return None


def stow_results(datasets: Sequence[Dataset], response: Dataset | None) -> list[InstanceResult]:
    """Per-instance outcomes from a STOW-RS response (PS3.18 table 10.5.3-1).

    Instances in the Failed SOP Sequence failed with their FailureReason; the others
    succeeded (with a warning status when the Referenced SOP item carries WarningReason).
    """
    failed: dict[str, int] = {}
    warned: dict[str, int] = {}
    if response is not None:
        for item in response.get("FailedSOPSequence", []):
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = _status_of(item)
        for item in response.get("ReferencedSOPSequence", []):
            if item.get("WarningReason") is not None:
                warned[str(item.get("ReferencedSOPInstanceUID", ""))] = int(item.WarningReason)
    results = []
    for ds in datasets:
        sop = str(ds.get("SOPInstanceUID", ""))
        cls = str(ds.get("SOPClassUID", ""))
        if sop in failed:
            status = failed[sop]
            results.append(
                InstanceResult(sop, cls, status, f"STOW-RS failure reason 0x{status:04X}")
            )
        elif sop in warned:
            # B000/B006/B007 are the storage warnings; report any other as a plain success.
            status = warned[sop] if warned[sop] in (0xB000, 0xB006, 0xB007) else 0x0000
            results.append(InstanceResult(sop, cls, status))
        else:
            results.append(InstanceResult(sop, cls, 0x0000))
    return results


def store_datasets(
    endpoint: DicomwebEndpoint,
    datasets: Sequence[Dataset],
    *,
    client: DICOMwebClient | None = None,
) -> DeliveryResult:
    """STOW-RS ``datasets`` to ``endpoint``; storing the same SOP instance again is harmless.

    HTTP 409 (Conflict) and 202 carry per-instance outcomes; other errors (401, 5xx,
    unreachable) raise ``DeliveryError`` with the status and URL.
    """
    client = client or _client(endpoint)
    try:
        response: Dataset | None = client.store_instances(list(datasets))
    except requests.HTTPError as exc:
        body = _response_dataset(exc.response)
        status = exc.response.status_code if exc.response is not None else 0
        if status == HTTPStatus.CONFLICT and body is not None and "FailedSOPSequence" in body:
            response = body
        else:
            raise DeliveryError(f"STOW-RS: {_http_reason(exc, endpoint)}") from exc
    except requests.RequestException as exc:
        raise DeliveryError(f"STOW-RS: {_http_reason(exc, endpoint)}") from exc
    results = tuple(stow_results(datasets, response))
    failed = sum(not r.ok for r in results)
    shown = redact_credentials(endpoint.url)
    LOGGER.info("STOW-RS of %d instances to %s: %d failed", len(results), shown, failed)
    return DeliveryResult(destination=shown, instances=results)


# -- QIDO-RS / WADO-RS -----------------------------------------------------------------------


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def search_studies(
    endpoint: DicomwebEndpoint,
    filters: Mapping[str, str],
    *,
    client: DICOMwebClient | None = None,
) -> list[str]:
    """Study Instance UIDs matching ``filters`` (QIDO-RS attribute keywords), all pages.

    Pages by limit/offset ourselves: dicomweb-client's ``get_remaining`` never ends against
    servers that ignore ``offset`` without ``limit`` (Orthanc 1.10's plugin). A page with no
    UID not seen before also ends the search, whatever the server does with ``offset``.
    """
    client = client or _client(endpoint)
    uids: dict[str, None] = {}
    offset = 0
    while True:
        try:
            page = client.search_for_studies(
                search_filters=dict(filters),
                fields=["StudyInstanceUID"],
                limit=QIDO_PAGE_SIZE,
                offset=offset,
            )
        except requests.RequestException as exc:
            raise FetchError(f"QIDO-RS: {_http_reason(exc, endpoint)}") from exc
        new = [u for u in (_value(item, "0020000D") for item in page) if u and u not in uids]
        uids.update(dict.fromkeys(new))
        if len(page) < QIDO_PAGE_SIZE or not new:
            return list(uids)
        offset += len(page)


def _encode(ds: Dataset) -> bytes:
    with BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()


def fetch_study(
    endpoint: DicomwebEndpoint,
    study_uid: str,
    *,
    client: DICOMwebClient | None = None,
) -> Iterator[RetrievedInstance]:
    """Stream the instances of a study by WADO-RS, in the transfer syntax the server holds.

    Raises ``FetchError`` when the server refuses or the study is unknown there.
    """
    client = client or _client(endpoint)
    count = 0
    try:
        for ds in client.iter_study(study_uid, media_types=_AS_STORED):
            count += 1
            yield RetrievedInstance(
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_uid=str(ds.get("SeriesInstanceUID", "")),
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                data=_encode(ds),
            )
    except requests.RequestException as exc:
        raise FetchError(f"WADO-RS of study {study_uid}: {_http_reason(exc, endpoint)}") from exc
    if count == 0:
        raise FetchError(
            f"WADO-RS of study {study_uid}: no instances at {redact_credentials(endpoint.url)}"
        )
