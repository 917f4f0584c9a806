"""A job whose destination wants the GSPS and the secondary captures, and their setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from pipelines.outputs import OutputOptions
from pipelines.registry import builtin_pipelines
from scu_scp.spool import Spool
from tests.support.jobs import FakePacs, spool_study
from tests.support.phantom import make_ct_phantom
from worker.config import load_settings
from worker.jobs.store import JobState, JobStore
from worker.run import processing
from worker.run.processing import Runtime, process_job


@pytest.fixture(scope="module")
def phantom() -> list[Dataset]:
    return make_ct_phantom(slices=12, size=64, pixel_spacing=5.5).datasets


def _runtime(tmp_path: Path, pacs: FakePacs, **delivery: Any) -> Runtime:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        destinations={
            "pacs": {
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": 4242,
                "outputs": ["gsps", "sc"],
            }
        },
        delivery=delivery,
    )
    return Runtime(
        settings=settings,
        store=JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"),
        spool=Spool(settings.spool_dir),
        pipelines=dict(builtin_pipelines()),
        send=pacs,
    )


@pytest.mark.parametrize("every_slice", [False, True])
def test_the_destination_gets_gsps_and_captures_as_the_setting_says(
    tmp_path: Path, phantom: list[Dataset], monkeypatch: pytest.MonkeyPatch, every_slice: bool
) -> None:
    pacs = FakePacs()
    options: list[OutputOptions] = []
    real = processing.annotate_study

    def spy(*args: Any, **kwargs: Any) -> Any:
        options.append(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(processing, "annotate_study", spy)
    settings = {"outputs_options": {"sc_every_slice": True}} if every_slice else {}
    rt = _runtime(tmp_path, pacs, **settings)
    job = process_job(rt, spool_study(rt, phantom))
    assert job.state is JobState.DONE, job.error
    assert options == [OutputOptions(sc_every_slice=every_slice)]
    kinds = [record["kind"] for record in job.delivered]
    assert set(kinds) == {"gsps", "sc"}
    assert kinds.count("gsps") == 1  # ct-basic's; ct-lung-nodules found nothing to draw
    if every_slice:
        assert kinds.count("sc") == len(phantom)
    assert len(pacs.received) == len(job.delivered)
