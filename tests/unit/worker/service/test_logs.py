"""Log records stay one line without secrets; service processes create private files.

The end-to-end checks run the real ``pacs-annotator scp`` process with a real redis-server
and send it a study over DICOM whose AccessionNumber tries to forge a log line.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.support.phantom import make_ct_phantom
from tests.support.processes import (
    free_port,
    require_binaries,
    start_command,
    stop_process,
    wait_for_port,
)
from tests.support.storescp import wait_for
from worker.service.embedded_redis import EmbeddedRedis
from worker.service.logs import FORMAT, SafeFormatter

FORGED = "2026-01-01 00:00:00,000 INFO worker.jobs.dispatch [1] job forged queued"
ACCESSION = f"A77\n{FORGED}\r\x1b[2J\x1b[31m"


def _formatted(message: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    return SafeFormatter(FORMAT).format(record)


def test_a_value_cannot_forge_a_line_or_reach_the_terminal() -> None:
    text = _formatted("job %s: accession %s", "j1", ACCESSION)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.endswith("accession A77\\n" + FORGED + "\\r\\x1b[2J\\x1b[31m")


def test_urls_lose_their_credentials_in_messages_and_tracebacks() -> None:
    try:
        raise ConnectionError("cannot connect to https://alice:s3cret@pacs.example/dicom-web")
    except ConnectionError as exc:
        text = _formatted("broker %s down", "redis://:hunter22@127.0.0.1:6379/0", exc=exc)
    assert "s3cret" not in text and "hunter22" not in text and "alice" not in text
    assert "redis://***@127.0.0.1:6379/0" in text and "https://***@pacs.example" in text


def test_a_traceback_cannot_start_a_line_of_its_own() -> None:
    try:
        raise ValueError(f"bad value {ACCESSION}")
    except ValueError as exc:
        text = _formatted("failed", exc=exc)
    first, *rest = text.split("\n")
    assert " ERROR t [" in first and first.endswith("] failed")
    assert rest and all(line.startswith((" ", "\t")) for line in rest)
    assert "\x1b" not in text and "\r" not in text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_scp_process_logs_a_forged_accession_on_one_line_and_keeps_files_private(
    tmp_path: Path,
) -> None:
    """The real SCP: a study whose AccessionNumber holds a newline and ANSI escapes."""
    require_binaries("redis-server")
    data = tmp_path / "data"
    port = free_port()
    with EmbeddedRedis(tmp_path / "broker") as broker:
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(data),
                    "broker_url": broker.url,
                    "scp": {"ae_title": "ANNOTATOR", "host": "127.0.0.1", "port": port},
                    "completion": {"quiet_seconds": 1, "release_grace_seconds": 0.2},
                    "monitor": {"enabled": False},
                }
            )
        )
        log_path = tmp_path / "scp.log"
        proc = start_command("scp", config, log_path)
        try:
            wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
            study_uid = generate_uid()
            phantom = make_ct_phantom(slices=2, size=16, study_uid=study_uid)
            ae = AE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate("127.0.0.1", port, ae_title="ANNOTATOR")
            assert assoc.is_established
            for ds in phantom.datasets:
                ds.AccessionNumber = ACCESSION
                assert assoc.send_c_store(ds).Status == 0
            assoc.release()
            assert wait_for(lambda: "queued: study" in log_path.read_text(), timeout=30)
        finally:
            stop_process(proc, timeout=30)
    text = log_path.read_text()
    (queued,) = [line for line in text.splitlines() if "queued: study" in line]
    assert "accession A77\\n" + FORGED + "\\r\\x1b[2J\\x1b[31m" in queued
    assert not any(line.startswith(FORGED) for line in text.splitlines()), text
    assert "\x1b" not in text and "\r" not in text
    # umask 077: everything the SCP process created under data_dir is private.
    created = [data, *data.rglob("*")]
    assert any(p.suffix == ".dcm" for p in created) and (data / "jobs.sqlite3").exists()
    for path in created:
        expected = 0o700 if path.is_dir() else 0o600
        assert _mode(path) == expected, f"{path} is {oct(_mode(path))}"
