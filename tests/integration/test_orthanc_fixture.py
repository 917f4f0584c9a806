"""The test-support classes start and stop REAL Orthanc, storescp and redis-server processes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import shared_data_path
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.processes import (
    free_port,
    pid_alive,
    require_binaries,
    stop_process,
    wait_for_port,
)

pytestmark = pytest.mark.integration

CT_INSTANCES = 41
CT_STUDY_UID = "1.3.6.1.4.1.14519.5.2.1.9203.8273.319461848560755521018609264462"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A dcmtk storescp on a free port: yields (AET, port, output directory)."""
    require_binaries("storescp")
    out = tmp_path / "storescp"
    out.mkdir()
    port = free_port()
    aet = "STORESCP"
    env = {**os.environ, "TCP_NODELAY": "1"}
    log = (tmp_path / "storescp.log").open("wb")
    proc = subprocess.Popen(
        ["storescp", "--aetitle", aet, "+xa", "-od", str(out), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=10.0, proc=proc)
        yield aet, port, out
    finally:
        stop_process(proc, timeout=5.0)
        log.close()


def test_orthanc_upload_and_store_to_storescp(storescp: tuple[str, int, Path]) -> None:
    require_orthanc()
    ct_dir = shared_data_path("ct-abdomen-crlm1004")
    scp_aet, scp_port, scp_dir = storescp

    with Orthanc(modalities={"SCP": (scp_aet, "127.0.0.1", scp_port)}) as pacs:
        assert pacs.aet == "ORTHANC"
        assert pacs.system()["DicomAet"] == "ORTHANC"
        assert pacs.system()["DicomPort"] == pacs.dicom_port
        # DICOMweb plugin loaded and answering under /dicom-web/
        qido = pacs.client.get(f"{pacs.dicomweb_url}/studies")
        assert qido.status_code in (200, 204), qido.text

        ids = pacs.upload_dir(ct_dir)  # LICENSE beside the files is skipped
        assert len(ids) == CT_INSTANCES
        assert len(set(ids)) == CT_INSTANCES
        assert pacs.instance_count() == CT_INSTANCES

        studies = pacs.studies()
        assert len(studies) == 1
        study_id = pacs.study_id_for_uid(CT_STUDY_UID)
        assert study_id == studies[0]
        assert pacs.study_id_for_uid("1.2.3.4.5.6.7.8.9") is None

        series = pacs.series_of_study(study_id)
        assert len(series) == 1
        assert series[0]["MainDicomTags"]["Modality"] == "CT"
        assert series[0]["MainDicomTags"]["SeriesInstanceUID"]
        assert len(series[0]["Instances"]) == CT_INSTANCES
        instances = pacs.instances_of_series(series[0]["ID"])
        assert {i["ID"] for i in instances} == set(ids)

        tags = pacs.instance_tags(ids[0])
        assert tags["StudyInstanceUID"] == CT_STUDY_UID
        assert tags["Modality"] == "CT"

        dest = pacs.download_instance(ids[0], scp_dir.parent / "download" / "one.dcm")
        assert dest.read_bytes()[128:132] == b"DICM"

        # QIDO-RS sees the study too
        qido = pacs.client.get(
            f"{pacs.dicomweb_url}/studies", params={"StudyInstanceUID": CT_STUDY_UID}
        )
        assert qido.status_code == 200
        assert len(qido.json()) == 1

        # Orthanc C-STOREs the study to the storescp registered in its config
        assert pacs.echo_modality("SCP")
        result = pacs.store_to_modality("SCP", study_id)
        assert int(result["InstancesCount"]) == CT_INSTANCES

        def all_received() -> list[Path] | None:
            files = list(scp_dir.iterdir())
            return files if len(files) >= CT_INSTANCES else None

        received = pacs.wait_for(
            all_received,
            timeout=10.0,
            message=f"{CT_INSTANCES} files in {scp_dir}",
        )
        assert len(received) == CT_INSTANCES

        pid = pacs.pid
        workdir = pacs.workdir
        assert pid is not None and workdir is not None
    # On exit Orthanc's PID is gone and its temp dir removed.
    assert not pid_alive(pid)
    assert not workdir.exists()


def test_orthanc_basic_auth_rejects_wrong_credentials() -> None:
    require_orthanc()
    with Orthanc(users={"alice": "s3cret"}, aet="AUTHPACS") as pacs:
        # the helper client carries the right credentials
        assert pacs.auth == ("alice", "s3cret")
        assert pacs.system()["DicomAet"] == "AUTHPACS"
        with httpx.Client(trust_env=False) as anon:
            assert anon.get(f"{pacs.http_url}/system").status_code == 401
            wrong = anon.get(f"{pacs.http_url}/system", auth=("alice", "wrong"))
            assert wrong.status_code == 401
            assert anon.get(f"{pacs.dicomweb_url}/studies").status_code == 401
            right = anon.get(f"{pacs.http_url}/system", auth=("alice", "s3cret"))
            assert right.status_code == 200
