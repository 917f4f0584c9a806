"""The receiver's settings: listening address, allowed callers, TLS, limits in bytes, completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import GIB, SettingsError, load_settings


def refusal(tmp_path: Path, **settings: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, data_dir=tmp_path, **settings)
    return str(info.value)


def test_defaults_listen_on_the_dicom_port_with_limits_in_bytes(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    scp = settings.scp
    assert (scp.ae_title, scp.host, scp.port) == ("PACS_ANNOTATOR", "0.0.0.0", 11112)
    assert scp.allowed_callers == () and scp.tls is None and scp.max_associations == 10
    assert (scp.max_instance_bytes, scp.max_study_bytes, scp.min_free_disk_bytes) == (
        2 * GIB,
        20 * GIB,
        1 * GIB,
    )
    assert settings.completion.quiet_seconds == 30.0


def test_connection_bounds_default_to_seconds_and_five_per_address(tmp_path: Path) -> None:
    scp = load_settings(None, data_dir=tmp_path).scp
    assert scp.associate_request_timeout_seconds == 5.0
    assert scp.pdu_timeout_seconds == 60.0
    assert scp.max_connections_per_address == 5


def test_allowed_callers_take_an_address_or_network_and_strip_the_ae_title(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        None,
        data_dir=tmp_path,
        scp={
            "ae_title": " ANNOTATOR ",
            "allowed_callers": [
                {"ae_title": "ORTHANC "},
                {"ae_title": "CT1", "host": "10.1.0.0/16"},
                {"ae_title": "CT2", "host": "::1"},
            ],
        },
    )
    assert settings.scp.ae_title == "ANNOTATOR"
    callers = [(c.ae_title, c.host) for c in settings.scp.allowed_callers]
    assert callers == [("ORTHANC", None), ("CT1", "10.1.0.0/16"), ("CT2", "::1")]


@pytest.mark.parametrize(
    ("scp", "named", "message"),
    [
        (
            {"allowed_callers": [{"ae_title": "CT", "host": "ct.example.org"}]},
            "scp.allowed_callers.0.host",
            "not an IP address or network (CIDR): 'ct.example.org'",
        ),
        (
            {"allowed_callers": [{"ae_title": "BAD\\AE"}]},
            "scp.allowed_callers.0.ae_title",
            "1-16 printable ASCII",
        ),
        ({"allowed_callers": [{"host": "10.0.0.1"}]}, "scp.allowed_callers.0.ae_title", ""),
        ({"port": 0}, "scp.port", "greater than or equal to 1"),
        ({"port": 65536}, "scp.port", "less than or equal to 65535"),
        ({"max_associations": 0}, "scp.max_associations", ""),
        ({"max_associations": 1001}, "scp.max_associations", ""),
        ({"max_study_bytes": -1}, "scp.max_study_bytes", ""),
        ({"associate_request_timeout_seconds": 0}, "scp.associate_request_timeout_seconds", ""),
        ({"pdu_timeout_seconds": -1}, "scp.pdu_timeout_seconds", ""),
        ({"max_connections_per_address": -1}, "scp.max_connections_per_address", ""),
        ({"min_free_disk_bytes": "1 GB"}, "scp.min_free_disk_bytes", "valid integer"),
        (
            {
                "tls": {
                    "certificate": "c.pem",
                    "private_key": "k.pem",
                    "require_client_certificate": True,
                }
            },
            "scp.tls",
            "require_client_certificate needs ca_certificates",
        ),
        ({"tls": {"certificate": "c.pem"}}, "scp.tls.private_key", "Field required"),
    ],
)
def test_bad_scp_settings_are_refused_naming_the_setting(
    tmp_path: Path, scp: dict[str, Any], named: str, message: str
) -> None:
    text = refusal(tmp_path, scp=scp)
    assert f"  {named}: " in text and message in text


@pytest.mark.parametrize("quiet", [0, -1, 86401])
def test_the_quiet_period_is_positive_and_at_most_a_day(tmp_path: Path, quiet: float) -> None:
    assert "completion.quiet_seconds" in refusal(tmp_path, completion={"quiet_seconds": quiet})


def test_byte_limits_come_from_the_environment_as_integers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_ANNOTATOR_SCP__MAX_INSTANCE_BYTES", str(512 * 1024**2))
    monkeypatch.setenv("PACS_ANNOTATOR_COMPLETION__QUIET_SECONDS", "2.5")
    settings = load_settings(None, data_dir=tmp_path)
    assert settings.scp.max_instance_bytes == 512 * 1024**2
    assert settings.completion.quiet_seconds == 2.5
