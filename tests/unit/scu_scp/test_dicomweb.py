"""DICOMweb edge: STOW-RS responses to per-instance results, error mapping, QIDO paging, TLS.

The client seam (``client=``) takes fakes here; tests/integration/test_dicomweb.py and
tests/unit/worker/sources/test_pull.py run the same code against a real Orthanc.
"""

from __future__ import annotations

import io
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid

from scu_scp.dicomweb import (
    QIDO_PAGE_SIZE,
    DicomwebEndpoint,
    FetchError,
    fetch_study,
    search_studies,
    store_datasets,
    stow_results,
)
from scu_scp.models import DeliveryError

ENDPOINT = DicomwebEndpoint("https://archive.example/dicom-web", "basic", "u", "secret")


def _instance(study: str = "1.2.3", series: str = "1.2.3.4") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "SEG"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _http_error(status: int, body: Dataset | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.url = f"{ENDPOINT.url}/studies"
    if body is not None:
        response._content = json.dumps(body.to_json_dict()).encode()
        response.headers["Content-Type"] = "application/dicom+json"
    else:
        response._content = b""
    return requests.HTTPError(f"{status}", response=response)


class FakeClient:
    """Stands in for DICOMwebClient: answers or raises what the test says."""

    def __init__(self, *, store: Any = None, pages: Sequence[list[str]] = ()) -> None:
        self._store = store
        self._pages = list(pages)
        self.offsets: list[int] = []
        self.instances: list[Dataset] = []

    def store_instances(self, datasets: Sequence[Dataset]) -> Dataset:
        if isinstance(self._store, Exception):
            raise self._store
        return self._store if self._store is not None else Dataset()

    def search_for_studies(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.offsets.append(kwargs["offset"])
        index = min(len(self.offsets) - 1, len(self._pages) - 1)
        page = self._pages[index] if self._pages else []
        return [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in page]

    def iter_study(self, study_uid: str, media_types: Any = None) -> Iterator[Dataset]:
        yield from self.instances


def _failed_item(uid: str, reason: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = SegmentationStorage
    item.ReferencedSOPInstanceUID = uid
    item.FailureReason = reason
    return item


def test_stow_results_read_failed_and_warning_items() -> None:
    ok, failed, warned = _instance(), _instance(), _instance()
    response = Dataset()
    response.FailedSOPSequence = [_failed_item(failed.SOPInstanceUID, 0xA700)]
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = warned.SOPInstanceUID
    ref.WarningReason = 0xB000
    response.ReferencedSOPSequence = [ref]
    results = stow_results([ok, failed, warned], response)
    assert [r.status for r in results] == [0x0000, 0xA700, 0xB000]
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "STOW-RS failure reason 0xA700"


def test_store_conflict_gives_per_instance_results() -> None:
    """409 Conflict with a Failed SOP Sequence: some stored, some not; not a whole failure."""
    good, bad = _instance(), _instance()
    body = Dataset()
    body.FailedSOPSequence = [_failed_item(bad.SOPInstanceUID, 0xC000)]
    client = FakeClient(store=_http_error(409, body))
    result = store_datasets(ENDPOINT, [good, bad], client=client)  # type: ignore[arg-type]
    assert [i.sop_instance_uid for i in result.failed] == [bad.SOPInstanceUID]
    assert result.instances[0].ok


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (_http_error(401), "401 Unauthorized from https://archive.example/dicom-web/studies"),
        (_http_error(503), "503 Service Unavailable from https://archive.example"),
        (_http_error(409), "409 Conflict from"),  # a conflict without per-instance detail
        (requests.ConnectionError("refused"), "cannot connect to https://archive.example"),
        (requests.exceptions.SSLError("bad cert"), "TLS verification failed for https://"),
        (requests.ReadTimeout("slow"), "no answer from https://archive.example/dicom-web"),
    ],
)
def test_store_errors_become_delivery_errors_naming_status_and_url(
    error: Exception, message: str
) -> None:
    client = FakeClient(store=error)
    with pytest.raises(DeliveryError, match="STOW-RS") as info:
        store_datasets(ENDPOINT, [_instance()], client=client)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "secret" not in str(info.value)


def test_endpoint_repr_hides_secrets() -> None:
    bearer = DicomwebEndpoint("https://a.example", "bearer", token="tok3n")
    assert "secret" not in repr(ENDPOINT)
    assert "tok3n" not in repr(bearer)


def test_search_pages_until_a_short_page() -> None:
    full = [f"1.2.{i}" for i in range(QIDO_PAGE_SIZE)]
    client = FakeClient(pages=[full, ["1.3.1", "1.3.2"]])
    uids = search_studies(ENDPOINT, {"ModalitiesInStudy": "CT"}, client=client)  # type: ignore[arg-type]
    assert uids == [*full, "1.3.1", "1.3.2"]
    assert client.offsets == [0, QIDO_PAGE_SIZE]


def test_search_ends_when_the_server_ignores_offset() -> None:
    """A server that answers every offset with the same page must not loop forever."""
    same = [f"1.2.{i}" for i in range(QIDO_PAGE_SIZE)]
    client = FakeClient(pages=[same])
    uids = search_studies(ENDPOINT, {}, client=client)  # type: ignore[arg-type]
    assert uids == same
    assert len(client.offsets) == 2


def test_fetch_reencodes_instances_as_part10() -> None:
    client = FakeClient()
    client.instances = [_instance(), _instance()]
    got = list(fetch_study(ENDPOINT, "1.2.3", client=client))  # type: ignore[arg-type]
    assert [g.sop_uid for g in got] == [ds.SOPInstanceUID for ds in client.instances]
    again = pydicom.dcmread(io.BytesIO(got[0].data))
    assert again.SOPInstanceUID == got[0].sop_uid
    assert again.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_fetch_of_an_empty_study_is_an_error() -> None:
    with pytest.raises(FetchError, match="no instances"):
        list(fetch_study(ENDPOINT, "1.2.3", client=FakeClient()))  # type: ignore[arg-type]


class _StowHandler(BaseHTTPRequestHandler):
    """Answers any STOW-RS with 200 and an empty response; records the Authorization header."""

    seen_auth: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _StowHandler.seen_auth.append(self.headers.get("Authorization", ""))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real TLS server with a self-signed certificate for 127.0.0.1: (base URL, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (Debian package 'openssl')")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StowHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web", cert
    finally:
        server.shutdown()
        server.server_close()


def test_tls_is_verified_by_default(https_server: tuple[str, Path]) -> None:
    url, _cert = https_server
    with pytest.raises(DeliveryError, match=f"TLS verification failed for {url}"):
        store_datasets(DicomwebEndpoint(url, timeout=10), [_instance()])


def test_ca_bundle_trusts_a_private_ca_and_bearer_token_is_sent(
    https_server: tuple[str, Path],
) -> None:
    url, cert = https_server
    endpoint = DicomwebEndpoint(url, "bearer", token="tok3n", ca_bundle=str(cert), timeout=10)
    result = store_datasets(endpoint, [_instance()])
    assert result.ok and len(result.instances) == 1
    assert _StowHandler.seen_auth[-1] == "Bearer tok3n"


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_verification_can_be_turned_off(https_server: tuple[str, Path]) -> None:
    url, _cert = https_server
    result = store_datasets(DicomwebEndpoint(url, verify_tls=False, timeout=10), [_instance()])
    assert result.ok
