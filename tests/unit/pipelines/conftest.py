"""Shared, session-scoped inputs: building the phantom and reading the real CT once."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pipelines.ct_basic import CtBasicPipeline
from pipelines.ct_lung_nodules import CtLungNodulesPipeline
from pipelines.findings import Findings
from pipelines.volume import Volume, load_series, scan_files
from tests.conftest import shared_data_path
from tests.support.phantom import CtPhantom, make_ct_phantom, make_nodule_phantom


@pytest.fixture(scope="session")
def phantom() -> CtPhantom:
    """The default axial phantom, in slice order. Do not mutate its datasets."""
    return make_ct_phantom()


@pytest.fixture(scope="session")
def phantom_volume(phantom: CtPhantom) -> Volume:
    return load_series(phantom.datasets)


@pytest.fixture(scope="session")
def phantom_findings(phantom_volume: Volume) -> Findings:
    return CtBasicPipeline().run(phantom_volume)


@pytest.fixture(scope="session")
def real_ct_datasets() -> list[Dataset]:
    """The 41 slices of the real CT (skips when ../shared/data is absent)."""
    folder = shared_data_path("ct-abdomen-crlm1004")
    series = scan_files(sorted(folder.glob("*.dcm"))).series
    assert len(series) == 1
    return next(iter(series.values()))


@pytest.fixture(scope="session")
def real_volume(real_ct_datasets: list[Dataset]) -> Volume:
    return load_series(real_ct_datasets)


@pytest.fixture(scope="session")
def real_findings(real_volume: Volume) -> Findings:
    return CtBasicPipeline().run(real_volume)


@pytest.fixture(scope="session")
def nodule_phantom() -> CtPhantom:
    """The thin-slice phantom with known nodules and vessels. Do not mutate it."""
    return make_nodule_phantom()


@pytest.fixture(scope="session")
def nodule_volume(nodule_phantom: CtPhantom) -> Volume:
    return load_series(nodule_phantom.datasets)


@pytest.fixture(scope="session")
def nodule_findings(nodule_volume: Volume) -> Findings:
    return CtLungNodulesPipeline().run(nodule_volume)


@pytest.fixture(scope="session")
def nodule_basic_findings(nodule_volume: Volume) -> Findings:
    return CtBasicPipeline().run(nodule_volume)
