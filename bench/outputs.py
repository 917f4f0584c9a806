"""Benchmark (not a test): what each output kind costs to write, against the SEG.

A site that asks for RTSTRUCT or KOS beside (or instead of) SEG and SR pays for each kind
on every job. For the findings of ct-basic and ct-lung-nodules on one series, each kind of
``pipelines/outputs.py`` is built from the same findings and encoded as the results folder
keeps it (``worker.run.results.encode``), best of ``--repeat`` runs; the figure is the
ratio to the SEG (the peer every job already writes), measured in the same run.

The RTSTRUCT is also written a second time the way pydicom encodes Contour Data by itself
(``rtstruct/DS``: each coordinate a ``DSfloat`` created and formatted one at a time), to show
what handing it the encoded values (``pipelines.rtstruct.contour_data_element``) saves.

Default series: the real 41-slice CT from ../shared/data, else the synthetic nodule
phantom (60 slices of 224x224). Or --series DIR.

Run: .venv/bin/python bench/outputs.py [--series DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import numpy.typing as npt
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from pipelines import rtstruct
from pipelines.ct_basic import CtBasicPipeline
from pipelines.ct_lung_nodules import CtLungNodulesPipeline
from pipelines.findings import Findings
from pipelines.outputs import (
    DEFAULT_OPTIONS,
    SERIES_KINDS,
    STUDY_KINDS,
    OutputIds,
    SeriesKind,
    StudyKind,
)
from pipelines.seg import non_empty_segments
from pipelines.sr_root import SeriesResult
from pipelines.volume import Volume, load_series, scan_files
from tests.conftest import SHARED_DATA
from tests.support.phantom import make_nodule_phantom
from worker.run.results import encode


def _volume(series: Path | None) -> tuple[Volume, str]:
    folder = series or SHARED_DATA / "ct-abdomen-crlm1004"
    if folder.is_dir():
        found = scan_files(sorted(p for p in folder.rglob("*") if p.is_file())).series
        datasets = max(found.values(), key=len)
        return load_series(datasets), f"{folder.name} ({len(datasets)} slices)"
    return load_series(make_nodule_phantom().datasets), "nodule phantom (60 slices)"


def _best(repeat: int, work: Callable[[], list[Dataset]]) -> tuple[float, list[Dataset]]:
    best, made = float("inf"), []
    for _ in range(repeat):
        started = time.perf_counter()
        made = work()
        for ds in made:
            encode(ds)
        best = min(best, time.perf_counter() - started)
    return best, made


def _per_series(kind: SeriesKind, volume: Volume, findings: list[Findings]) -> list[Dataset]:
    """Every dataset of ``kind`` for each result that has something for it."""
    made: list[Dataset] = []
    for number, found in enumerate(findings):
        if kind.applies(found):
            ids = OutputIds(kind.name, (str(number),), kind.series_offset)
            made += kind.build(volume, found, ids, "bench", DEFAULT_OPTIONS)
    return made


def _per_value(kind: SeriesKind, volume: Volume, findings: list[Findings]) -> list[Dataset]:
    """The RTSTRUCTs with Contour Data given to pydicom as floats (as before the bulk
    encoding): pydicom creates a DSfloat per value and formats each when writing."""

    def as_floats(points_mm: npt.NDArray[np.float64]) -> DataElement:
        values = (np.round(points_mm.reshape(-1), rtstruct.CONTOUR_DECIMALS) + 0.0).tolist()
        return DataElement(Tag("ContourData"), "DS", values)

    with patch.object(rtstruct, "contour_data_element", as_floats):
        return _per_series(kind, volume, findings)


def _per_study(
    kind: StudyKind, sources: list[Dataset], results: list[SeriesResult]
) -> list[Dataset]:
    return [kind.build(sources, results, OutputIds(kind.name, ("bench",), 9000), "bench")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, help="a folder with one CT series")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    volume, what = _volume(args.series)
    findings = [CtBasicPipeline().run(volume), CtLungNodulesPipeline().run(volume)]
    print(f"{what}: {', '.join(f.algorithm.name for f in findings)}")
    seconds: dict[str, float] = {}
    results: list[SeriesResult] = []
    for kind in SERIES_KINDS.values():
        seconds[kind.name], built = _best(args.repeat, partial(_per_series, kind, volume, findings))
        if kind.name == "rtstruct":
            seconds["rtstruct/DS"], _ = _best(
                args.repeat, partial(_per_value, kind, volume, findings)
            )
        if kind.name == "seg":
            segs = iter(built)
            results = [(volume, f, next(segs) if non_empty_segments(f) else None) for f in findings]
    for study_kind in STUDY_KINDS.values():
        seconds[study_kind.name], _ = _best(
            args.repeat, partial(_per_study, study_kind, list(volume.datasets), results)
        )
    print(f"{'kind':<12} {'seconds':>8} {'x SEG':>6}")
    for name, value in seconds.items():
        print(f"{name:<12} {value:8.2f} {value / seconds['seg']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
