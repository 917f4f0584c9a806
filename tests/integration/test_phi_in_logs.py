"""No PHI in logs: a full round trip through the real service, then its logs are searched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid

from tests.integration.conftest import RunningService, run_up, write_config
from tests.integration.test_round_trip import instances_of_modality, send_and_wait
from tests.support.orthanc import Orthanc
from tests.support.phantom import make_ct_phantom
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

# Distinctive values: any of them in a log can only come from the study's header.
FAMILY, GIVEN, MIDDLE = "Quixotewski", "Dulcinea", "Maribel"
PATIENT_ID = "PX93417ZQ"
BIRTH_DATE = "19470312"
ACCESSION = "ACC7731"


def _phi_strings() -> list[str]:
    return [
        f"{FAMILY}^{GIVEN}^{MIDDLE}",
        FAMILY,
        GIVEN,
        MIDDLE,
        PATIENT_ID,
        BIRTH_DATE,
        "1947-03-12",
        "12.03.1947",
        "03/12/1947",
    ]


def _logs(service: RunningService) -> dict[str, str]:
    """The service's own output plus every log file it wrote under its data directory."""
    logs = {str(service.log_path): service.log()}
    for path in service.data_dir.rglob("*.log"):
        logs[str(path)] = path.read_text(errors="replace")
    return logs


@pytest.fixture(scope="module")
def debug_service(
    orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """Like the `service` fixture, at log_level DEBUG: what an admin chasing a problem sets."""
    root = tmp_path_factory.mktemp("debug-service")
    port = free_port()
    config = write_config(root / "config.yaml", data_dir=root / "data", port=port, orthanc=orthanc)
    settings = yaml.safe_load(config.read_text())
    settings["log_level"] = "DEBUG"
    settings["scp"]["ae_title"] = "ANNOTATOR_DBG"
    config.write_text(yaml.safe_dump(settings))
    with run_up(config, port=port, orthanc=orthanc, aet="ANNOTATOR_DBG") as running:
        yield running


@pytest.mark.parametrize("which", ["service", "debug_service"])
def test_round_trip_logs_carry_no_patient_name_id_or_birth_date(
    orthanc: Orthanc, which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    service: RunningService = request.getfixturevalue(which)
    settings = yaml.safe_load(service.config.read_text())
    # Point Orthanc's "annotator" node at this service (both fixtures register that name).
    orthanc.add_modality("annotator", settings["scp"]["ae_title"], "127.0.0.1", service.port)
    study_uid = generate_uid()
    phantom = make_ct_phantom(slices=12, size=64, study_uid=study_uid)
    for i, ds in enumerate(phantom.datasets):
        ds.PatientName = f"{FAMILY}^{GIVEN}^{MIDDLE}"
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
        ds.AccessionNumber = ACCESSION
        path = tmp_path / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        orthanc.upload(path)

    job = send_and_wait(orthanc, service, study_uid)

    # The round trip really happened and was logged: results are in the PACS, and the log
    # names the study and its accession number (allowed), so the search below is not vacuous.
    assert job["instances"] == len(phantom.datasets)
    assert instances_of_modality(orthanc, study_uid, "SEG")
    logs = _logs(service)
    combined = "\n".join(logs.values())
    assert study_uid in combined
    assert ACCESSION in combined
    if settings["log_level"] == "DEBUG":
        assert " DEBUG " in combined, "the debug service did not log at DEBUG"
    for name, text in logs.items():
        lowered = text.lower()
        for value in _phi_strings():
            assert value.lower() not in lowered, f"PHI {value!r} found in {name}"
