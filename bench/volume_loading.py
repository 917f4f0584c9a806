"""Benchmark (not a test): our volume loader against highdicom's volume API, same inputs.

Why ``pipelines/volume.py`` reads planes itself instead of calling
``highdicom.get_volume_from_series`` / ``Image.get_volume``: highdicom refuses what this
loader exists for (tilted, unevenly spaced, multi-stack), does not say which source image
is which slice (the SEG needs it), and its messages do not name instances. This measures
the other side: the time on the inputs highdicom does read, each loader run ``--repeat``
times in the same process, as a ratio ours/highdicom.

Inputs: the real 41-slice CT in ../shared/data (single-frame) and the same CT as a Legacy
Converted Enhanced CT built by highdicom (multi-frame); without ../shared/data the
synthetic phantom. Also reported: our loader on a 30-degree tilted, unevenly spaced stack
against the same stack regular (the cost of resampling and mapping back).

Run: .venv/bin/python bench/volume_loading.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.volume import load_series, scan_files
from tests.conftest import SHARED_DATA
from tests.support.phantom import make_ct_phantom
from tests.support.tilted import make_sphere_stack


def _median_seconds(
    run: Callable[[list[Dataset]], object], items: list[Dataset], repeat: int
) -> float:
    """Median time of ``run`` on fresh, undecoded copies of ``items`` (copying not timed:
    decoded pixels are cached on a dataset, so every run starts from new copies)."""
    times = []
    for _ in range(repeat):
        copies = [copy.deepcopy(ds) for ds in items]
        started = time.perf_counter()
        run(copies)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _series() -> tuple[list[Dataset], str]:
    folder = SHARED_DATA / "ct-abdomen-crlm1004"
    if folder.is_dir():
        [datasets] = scan_files(sorted(folder.glob("*.dcm"))).series.values()
        return datasets, "real CT, 41 x 512 x 512"
    return make_ct_phantom().datasets, "phantom CT, 48 x 128 x 128"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    datasets, what = _series()
    enhanced = LegacyConvertedEnhancedCTImage(
        datasets,
        series_instance_uid="2.25.420001",
        series_number=1,
        sop_instance_uid="2.25.420002",
        instance_number=1,
    )

    ours = load_series([copy.deepcopy(ds) for ds in datasets])
    theirs = hd.get_volume_from_series([copy.deepcopy(ds) for ds in datasets], dtype=np.float32)
    assert ours.voxels.shape == theirs.array.shape

    def highdicom_series(items: list[Dataset]) -> object:
        return hd.get_volume_from_series(items, dtype=np.float32)

    def highdicom_image(items: list[Dataset]) -> object:
        return hd.Image.from_dataset(items[0], copy=False).get_volume(dtype=np.float32)

    rows = [
        (
            f"single-frame ({what})",
            _median_seconds(load_series, datasets, args.repeat),
            _median_seconds(highdicom_series, datasets, args.repeat),
        ),
        (
            "Legacy Converted Enhanced CT of it",
            _median_seconds(load_series, [enhanced], args.repeat),
            _median_seconds(highdicom_image, [enhanced], args.repeat),
        ),
    ]
    print(f"{'input':45} {'ours s':>8} {'highdicom s':>12} {'ours/highdicom':>15}")
    for name, mine, other in rows:
        print(f"{name:45} {mine:8.3f} {other:12.3f} {mine / other:15.2f}")

    regular = make_sphere_stack(tilt_degrees=0.0)
    uneven = [float(v) for v in np.cumsum([2.5] * 14 + [5.0] * 8 + [2.5] * 10) - 52.5]
    tilted = make_sphere_stack(tilt_degrees=30.0, table_positions=uneven)
    plain = _median_seconds(load_series, regular.datasets, args.repeat)
    mask = load_series(tilted.datasets).voxels > 300

    def resampled(items: list[Dataset]) -> None:
        load_series(items).plane_masks(mask)

    cost = _median_seconds(resampled, tilted.datasets, args.repeat)
    print(
        f"tilted 30 deg + uneven, load and map back: {cost:.3f} s; regular 40 x 64 x 64 "
        f"load: {plain:.3f} s; ratio {cost / plain:.2f}"
    )


if __name__ == "__main__":
    main()
