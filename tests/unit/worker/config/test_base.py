"""What every section shares: unknown keys refused, frozen values, the common validators."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.config import CompletionSettings
from worker.config.base import check_ae_title, check_ca_bundle, check_http_url


def test_a_section_refuses_unknown_keys_and_never_changes() -> None:
    with pytest.raises(ValidationError, match="quiet_secs"):
        CompletionSettings(quiet_secs=5)  # type: ignore[call-arg]
    section = CompletionSettings(quiet_seconds=5)
    with pytest.raises(ValidationError, match="frozen"):
        section.quiet_seconds = 6  # type: ignore[misc]


def test_ae_titles_are_stripped_and_limited_to_the_default_repertoire() -> None:
    assert check_ae_title(" PACS ") == "PACS"
    assert check_ae_title("A" * 16) == "A" * 16
    for bad in ("", "    ", "A" * 17, "BACK\\SLASH", "ÄRZTE", "TAB\tAE"):
        with pytest.raises(ValueError, match="1-16 printable ASCII"):
            check_ae_title(bad)


def test_http_urls_keep_scheme_and_host_and_lose_the_trailing_slash() -> None:
    assert (
        check_http_url("https://archive.example/dicom-web/") == "https://archive.example/dicom-web"
    )
    assert check_http_url("http://10.0.0.5:8042") == "http://10.0.0.5:8042"
    assert check_http_url(None) is None
    for bad in ("ftp://archive.example", "archive.example/dicom-web", "https://", "https:// x"):
        with pytest.raises(ValueError, match=r"http:// or https:// URL"):
            check_http_url(bad)


def test_a_ca_bundle_must_be_a_file(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert check_ca_bundle(bundle) == bundle
    assert check_ca_bundle(None) is None
    with pytest.raises(ValueError, match=re.escape(f"CA bundle {tmp_path} is not a readable")):
        check_ca_bundle(tmp_path)  # a folder
    with pytest.raises(ValueError, match=r"absent\.pem is not a readable file"):
        check_ca_bundle(tmp_path / "absent.pem")
