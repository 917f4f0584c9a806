"""Security and limit settings: validated with the setting named, and wired into the real SCP."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from scu_scp.admission import ScpLimits
from scu_scp.connections import ConnectionLimits
from tests.support.big_instances import write_big_ct
from tests.support.edge import Pki, dcmtk, pki
from tests.support.processes import free_port, start_command, stop_process, wait_for_port
from tests.support.storescp import dcmtk_tool, wait_for
from worker.cli import EXIT_USAGE, main
from worker.config import SettingsError, load_settings
from worker.delivery.senders import check_destination_tls, destination_node
from worker.service.scp import run_scp, scp_options

__all__ = ["pki"]  # fixture


@pytest.mark.parametrize(
    ("scp", "setting"),
    [
        ({"allowed_callers": [{"ae_title": "PACS", "host": "pacs.example.org"}]}, "host"),
        ({"allowed_callers": [{"ae_title": "A\\B"}]}, "ae_title"),
        (
            {
                "tls": {
                    "certificate": "a.pem",
                    "private_key": "a.key",
                    "require_client_certificate": True,
                }
            },
            "scp.tls",
        ),
        ({"max_instance_bytes": -1}, "scp.max_instance_bytes"),
        ({"min_free_disk_bytes": -5}, "scp.min_free_disk_bytes"),
        ({"max_associations": 0}, "scp.max_associations"),
    ],
)
def test_bad_scp_security_settings_name_the_setting(scp: dict[str, object], setting: str) -> None:
    with pytest.raises(SettingsError, match=setting.replace(".", r"\.")):
        load_settings(None, scp=scp)


def test_destination_tls_needs_key_with_certificate() -> None:
    dest = {"ae_title": "PACS", "host": "h", "port": 104, "tls": {"certificate": "c.pem"}}
    with pytest.raises(SettingsError, match=r"destinations\.pacs\.tls"):
        load_settings(None, destinations={"pacs": dest})


def test_settings_become_scp_options_and_tls_nodes(pki: Pki) -> None:
    settings = load_settings(
        None,
        scp={
            "allowed_callers": [{"ae_title": "PACS", "host": "10.0.0.0/8"}],
            "tls": {
                "certificate": str(pki.server.certificate),
                "private_key": str(pki.server.private_key),
                "ca_certificates": str(pki.ca),
                "require_client_certificate": True,
            },
            "max_instance_bytes": 1000,
            "max_study_bytes": 5000,
            "min_free_disk_bytes": 7,
            "associate_request_timeout_seconds": 2,
            "pdu_timeout_seconds": 20,
            "max_connections_per_address": 3,
        },
        destinations={
            "pacs": {
                "ae_title": "PACS",
                "host": "h",
                "port": 104,
                "tls": {"ca_certificates": str(pki.ca)},
            },
        },
    )
    options = scp_options(settings)
    assert options["limits"] == ScpLimits(1000, 5000, 7)
    assert options["connection_limits"] == ConnectionLimits(
        associate_request_timeout=2, pdu_timeout=20, max_connections_per_address=3
    )
    assert options["allowed_callers"][0].host == "10.0.0.0/8"
    assert options["tls"].require_client_certificate
    node = destination_node(settings.destinations["pacs"])
    assert node.tls is not None and node.tls.ca_certificates == pki.ca
    check_destination_tls(settings)  # loads fine


def test_unloadable_tls_files_stop_start_up_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    settings = load_settings(
        None,
        scp={
            "tls": {
                "certificate": str(pki.server.certificate),
                "private_key": str(pki.client.private_key),
            }
        },  # key of another cert
        destinations={
            "pacs": {
                "ae_title": "PACS",
                "host": "h",
                "port": 104,
                "tls": {"ca_certificates": str(tmp_path / "missing.pem")},
            }
        },
    )
    with pytest.raises(SettingsError, match=r"scp\.tls"):
        scp_options(settings)
    with pytest.raises(SettingsError, match=r"destinations\.pacs\.tls\.ca_certificates"):
        check_destination_tls(settings)


def test_scp_command_with_a_bad_certificate_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "broker_url": "redis://127.0.0.1:1/0",
                "scp": {
                    "tls": {
                        "certificate": str(tmp_path / "none.pem"),
                        "private_key": str(tmp_path / "none.key"),
                    }
                },
            }
        )
    )
    assert main(["scp", "--config", str(config)]) == EXIT_USAGE
    assert "scp.tls" in capsys.readouterr().err


def test_scp_command_applies_allow_list_and_tls(pki: Pki, tmp_path: Path) -> None:
    """`pacs-annotator scp` as a process: settings reach the real listener."""
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "broker_url": f"redis://127.0.0.1:{free_port()}/0",  # not needed until a study ends
                "scp": {
                    "ae_title": "ANNOTATOR",
                    "host": "127.0.0.1",
                    "port": port,
                    "allowed_callers": [{"ae_title": "PACS", "host": "127.0.0.1"}],
                    "tls": {
                        "certificate": str(pki.server.certificate),
                        "private_key": str(pki.server.private_key),
                        "ca_certificates": str(pki.ca),
                        "require_client_certificate": True,
                    },
                },
            }
        )
    )
    proc = start_command("scp", config, tmp_path / "scp.log")
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        client = [
            "+tls",
            str(pki.client.private_key),
            str(pki.client.certificate),
            "+cf",
            str(pki.ca),
            "-aec",
            "ANNOTATOR",
            "127.0.0.1",
            str(port),
        ]
        assert dcmtk("echoscu", "-aet", "PACS", *client).returncode == 0
        assert dcmtk("echoscu", "-aet", "INTRUDER", *client).returncode != 0
        assert (
            dcmtk("echoscu", "-aet", "PACS", "-aec", "ANNOTATOR", "127.0.0.1", str(port)).returncode
            != 0
        )  # plain DICOM on a TLS port
    finally:
        stop_process(proc, timeout=30)
    text = (tmp_path / "scp.log").read_text()
    assert "INTRUDER@127.0.0.1 rejected" in text
    assert "TLS handshake" in text


def test_scp_loop_stops_with_status_1_once_its_broker_cannot_be_kept_alive(
    tmp_path: Path,
) -> None:
    """`up` passes its embedded Redis' keep_alive: False means restarts were exhausted."""
    settings = load_settings(
        None,
        data_dir=tmp_path,
        broker_url="redis://127.0.0.1:1/0",
        scp={"host": "127.0.0.1", "port": free_port()},
    )
    answers = iter([True, False])
    assert run_scp(settings, threading.Event(), keep_alive=lambda: next(answers)) == 1


def test_a_dataset_cut_off_by_an_scp_crash_stays_in_the_spool_until_the_next_start(
    tmp_path: Path,
) -> None:
    """`pacs-annotator scp` receives into data_dir/spool/receiving, not the system's /tmp,
    and the next start deletes what a killed SCP was receiving (never acknowledged)."""
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "broker_url": f"redis://127.0.0.1:{free_port()}/0",  # not needed until a study ends
                "scp": {"ae_title": "ANNOTATOR", "host": "127.0.0.1", "port": port},
            }
        )
    )
    receiving = tmp_path / "data" / "spool" / "receiving"
    big = tmp_path / "big.dcm"
    write_big_ct(big, 200 * 1024 * 1024)
    proc = start_command("scp", config, tmp_path / "scp.log")
    sender = None
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
        sender = subprocess.Popen(
            [dcmtk_tool("storescu"), "-aec", "ANNOTATOR", "127.0.0.1", str(port), str(big)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        arrived = wait_for(lambda: receiving.is_dir() and any(receiving.iterdir()), timeout=60)
        assert arrived, "nothing was written to data_dir/spool/receiving while arriving"
    finally:
        stop_process(proc, timeout=0)  # SIGKILL: a crash mid-dataset
        if sender is not None:
            stop_process(sender, timeout=0)
    assert any(receiving.iterdir())  # what the crash left

    again = start_command("scp", config, tmp_path / "scp-again.log")
    try:
        # Not the port: a receiver process of the killed SCP may hold it a moment longer.
        started = wait_for(
            lambda: "storage SCP ANNOTATOR listening" in (tmp_path / "scp-again.log").read_text(),
            timeout=60,
        )
        assert started, "the SCP did not start again"
        assert list(receiving.iterdir()) == []
    finally:
        stop_process(again, timeout=30)
    assert "cut off when the SCP last stopped" in (tmp_path / "scp-again.log").read_text()
