"""Where results go: DICOM destinations, their TLS, the delivery rules, retries and timeouts.

DICOMweb destinations and their authentication are in test_dicomweb.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import SettingsError, load_settings

PACS = {"ae_title": "PACS", "host": "pacs.example", "port": 104}


def refusal(tmp_path: Path, **settings: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(None, data_dir=tmp_path, **settings)
    return str(info.value)


def test_delivery_defaults_retry_five_times_with_a_delay_and_a_timeout(tmp_path: Path) -> None:
    delivery = load_settings(None, data_dir=tmp_path).delivery
    assert (delivery.to, delivery.rules) == ((), ())
    assert (delivery.max_retries, delivery.retry_delay_seconds, delivery.timeout_seconds) == (
        5,
        30.0,
        60.0,
    )


def test_a_dicom_destination_is_the_default_type_and_strips_its_ae_title(tmp_path: Path) -> None:
    settings = load_settings(
        None, data_dir=tmp_path, destinations={"pacs": {**PACS, "ae_title": " PACS "}}
    )
    pacs = settings.destinations["pacs"]
    assert (pacs.type, pacs.ae_title, pacs.host, pacs.port) == (
        "dicom",
        "PACS",
        "pacs.example",
        104,
    )
    assert pacs.tls is None and pacs.default is False and pacs.verify_tls is True


@pytest.mark.parametrize(
    ("destination", "named", "message"),
    [
        ({}, "destinations.pacs", "a dicom destination needs ae_title, host, port"),
        ({"ae_title": "PACS", "host": "h"}, "destinations.pacs", "needs port"),
        ({**PACS, "port": 70000}, "destinations.pacs.port", "less than or equal to 65535"),
        ({**PACS, "ae_title": "TOO_LONG_AE_TITLE_"}, "destinations.pacs.ae_title", "1-16"),
        ({**PACS, "calling_ae": "X"}, "destinations.pacs.calling_ae", "Extra inputs"),
        (
            {**PACS, "tls": {"certificate": "client.pem"}},
            "destinations.pacs.tls",
            "certificate and private_key go together",
        ),
        (
            {**PACS, "tls": {"private_key": "client.key"}},
            "destinations.pacs.tls",
            "certificate and private_key go together",
        ),
    ],
)
def test_bad_destinations_are_refused_naming_the_setting(
    tmp_path: Path, destination: dict[str, Any], named: str, message: str
) -> None:
    text = refusal(tmp_path, destinations={"pacs": destination})
    assert f"  {named}: " in text and message in text


def test_destination_tls_takes_a_client_pair_or_none(tmp_path: Path) -> None:
    tls = {"certificate": "client.pem", "private_key": "client.key", "check_hostname": False}
    settings = load_settings(None, data_dir=tmp_path, destinations={"pacs": {**PACS, "tls": tls}})
    given = settings.destinations["pacs"].tls
    assert given is not None
    assert (given.certificate, given.private_key) == (Path("client.pem"), Path("client.key"))
    assert given.ca_certificates is None and given.check_hostname is False
    trust_only = load_settings(
        None, data_dir=tmp_path, destinations={"pacs": {**PACS, "tls": {"ca_certificates": "ca"}}}
    )
    assert trust_only.destinations["pacs"].tls is not None


@pytest.mark.parametrize(
    ("delivery", "named"),
    [
        ({"max_retries": -1}, "delivery.max_retries"),
        ({"max_retries": 101}, "delivery.max_retries"),
        ({"retry_delay_seconds": 0}, "delivery.retry_delay_seconds"),
        ({"timeout_seconds": -5}, "delivery.timeout_seconds"),
        ({"rules": [{"to": []}]}, "delivery.rules.0.to"),
        ({"rules": [{"to": ["pacs"], "calling_ae": "CT"}]}, "delivery.rules.0.calling_ae"),
    ],
)
def test_bad_delivery_settings_are_refused_naming_the_setting(
    tmp_path: Path, delivery: dict[str, Any], named: str
) -> None:
    assert f"  {named}: " in refusal(tmp_path, destinations={"pacs": PACS}, delivery=delivery)


def test_a_rule_keeps_its_conditions(tmp_path: Path) -> None:
    rule = {"to": ["pacs"], "source": "web", "modality": "CT", "pipelines": ["ct-basic"]}
    settings = load_settings(
        None, data_dir=tmp_path, destinations={"pacs": PACS}, delivery={"rules": [rule]}
    )
    (kept,) = settings.delivery.rules
    assert (kept.to, kept.source, kept.modality, kept.pipelines) == (
        ("pacs",),
        "web",
        "CT",
        ("ct-basic",),
    )


def test_outputs_default_to_seg_and_sr_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_dir=tmp_path,
        destinations={"pacs": {**PACS, "outputs": ["kos", "rtstruct", "kos"]}},
        delivery={"rules": [{"to": ["pacs"], "outputs": ["sr", "seg"]}]},
    )
    assert settings.delivery.outputs == ("seg", "sr")
    assert settings.destinations["pacs"].outputs == ("rtstruct", "kos")  # build order, once
    assert settings.delivery.rules[0].outputs == ("seg", "sr")
    assert load_settings(None, data_dir=tmp_path).delivery.rules == ()
    message = refusal(tmp_path, destinations={"pacs": {**PACS, "outputs": ["rtstrct"]}})
    assert "destinations.pacs.outputs" in message and "unknown output 'rtstrct'" in message
    assert "known: seg, rtstruct, gsps, sc, sr, kos" in message
    message = refusal(tmp_path, delivery={"outputs": []})
    assert "delivery.outputs" in message and "at least one" in message
    message = refusal(
        tmp_path,
        destinations={"pacs": PACS},
        delivery={"rules": [{"to": ["pacs"], "outputs": ["pdf"]}]},
    )
    assert "delivery.rules.0.outputs" in message and "'pdf'" in message
