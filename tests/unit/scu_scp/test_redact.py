"""Credentials in URLs never reach a message; control characters are written visibly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydicom.uid import generate_uid

from scu_scp.dicomweb import DicomwebEndpoint, FetchError, fetch_study, store_datasets
from scu_scp.models import DeliveryError
from scu_scp.redact import escape_controls, redact_credentials
from tests.support.processes import free_port
from tests.unit.scu_scp.test_dicomweb import _instance

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://alice:s3cret@pacs.example/dicom-web", "https://***@pacs.example/dicom-web"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("postgresql+psycopg://u:s3cret@db/x", "postgresql+psycopg://***@db/x"),
        ("to http://a:p@s3cret@h:80/x failed", "to http://***@h:80/x failed"),  # '@' in password
        ("https://pacs.example/studies/1.2@3", "https://pacs.example/studies/1.2@3"),  # path
        ("mail alice@example.org", "mail alice@example.org"),  # not a URL
    ],
)
def test_redact_credentials(text: str, shown: str) -> None:
    assert redact_credentials(text) == shown


def test_escape_controls_keeps_text_on_one_line() -> None:
    assert (
        escape_controls("A\nB\r\x1b[2J\x00\x85\u2028é\t") == "A\\nB\\r\\x1b[2J\\x00\\x85\\u2028é\t"
    )
    assert escape_controls("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


class _Unauthorized(BaseHTTPRequestHandler):
    def _refuse(self) -> None:
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _refuse  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing_archive() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://alice:{SECRET}@127.0.0.1:{server.server_port}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def test_stow_to_an_unreachable_archive_hides_the_password() -> None:
    endpoint = DicomwebEndpoint(f"http://alice:{SECRET}@127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(DeliveryError) as info:
        store_datasets(endpoint, [_instance()])
    assert "cannot connect to http://***@127.0.0.1" in str(info.value)
    assert SECRET not in str(info.value)


def test_answers_of_a_real_archive_hide_the_password(refusing_archive: str) -> None:
    endpoint = DicomwebEndpoint(refusing_archive)
    with pytest.raises(DeliveryError) as stored:
        store_datasets(endpoint, [_instance()])
    with pytest.raises(FetchError) as fetched:
        list(fetch_study(endpoint, generate_uid()))
    for message in (str(stored.value), str(fetched.value)):
        assert "401 Unauthorized from http://***@127.0.0.1" in message
        assert SECRET not in message and "alice" not in message
