"""The monitor section: its address as shown to the admin, and its disk floor in one unit."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.config import MIB, MonitorSettings


def test_a_wildcard_address_is_shown_as_loopback() -> None:
    assert MonitorSettings().url == "http://127.0.0.1:8080/"
    assert MonitorSettings(host="0.0.0.0", port=9000).url == "http://127.0.0.1:9000/"
    assert MonitorSettings(host="10.1.2.3").url == "http://10.1.2.3:8080/"


def test_the_disk_floor_keeps_its_megabyte_key_and_is_compared_in_bytes() -> None:
    assert MonitorSettings(min_free_disk_mb=5).min_free_disk_bytes == 5 * MIB


def test_trusted_origins_must_be_bare_origins() -> None:
    ok = MonitorSettings(trusted_origins=["https://monitor.example", "http://10.0.0.5:8080"])
    assert ok.trusted_origins == ["https://monitor.example", "http://10.0.0.5:8080"]
    for bad in ("monitor.example", "https://monitor.example/", "ftp://x", "https://"):
        with pytest.raises(ValidationError, match="is not an origin"):
            MonitorSettings(trusted_origins=[bad])


def test_tls_needs_both_files_and_shows_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("x")
    tls = MonitorSettings(tls_certificate=cert, tls_private_key=key, port=8443)
    assert tls.url == "https://127.0.0.1:8443/"
    with pytest.raises(ValidationError, match="go together"):
        MonitorSettings(tls_certificate=cert)
    with pytest.raises(ValidationError, match="not a readable file"):
        MonitorSettings(tls_certificate=cert, tls_private_key=tmp_path / "missing.pem")
