"""Benchmark (not a test): the monitor's job preview on large images, against plain decoding.

A series of ``--slices`` CT instances of ``--side`` x ``--side`` 16-bit pixels is written to
a temporary folder. The preview draws four of them. The peer is what any preview must at
least do: ``pydicom.dcmread`` plus ``pixel_array`` of the same four files, nothing else.
Reported: time and peak traced memory (tracemalloc: numpy buffers included) of each, and
their ratios, so load from other processes on the machine cancels out.

Run: .venv/bin/python bench/preview.py [--side 4096] [--slices 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.phantom import make_ct_phantom
from worker.monitor.preview import render_preview


def _write_series(folder: Path, side: int, slices: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, ds in enumerate(make_ct_phantom(slices=slices, size=16, seed=1).datasets):
        ds.Rows = ds.Columns = side
        ds.PixelData = rng.integers(0, 2000, (side, side), dtype=np.uint16).tobytes()
        paths.append(folder / f"{i:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _measure(run: Callable[[], object], repeat: int) -> tuple[float, int]:
    """Best wall time of ``repeat`` runs, and the peak traced memory of one run."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write_series(Path(tmp), args.side, args.slices)
        results = Path(tmp) / "no-results"
        chosen = [paths[int(q * (len(paths) - 1))] for q in np.linspace(0.2, 0.8, 4)]

        def peer() -> None:
            for path in chosen:
                pydicom.dcmread(path).pixel_array  # noqa: B018 (the decode is the work)

        ours_s, ours_peak = _measure(lambda: render_preview(paths, results), args.repeat)
        peer_s, peer_peak = _measure(peer, args.repeat)
    mib = 2**20
    print(f"{args.slices} slices of {args.side} x {args.side} (16-bit), 4 drawn")
    print(f"preview        {ours_s:7.3f} s   peak {ours_peak / mib:7.1f} MiB")
    print(f"decode 4 (peer){peer_s:7.3f} s   peak {peer_peak / mib:7.1f} MiB")
    print(
        f"ratio preview/peer: time {ours_s / peer_s:.2f}, peak memory {ours_peak / peer_peak:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
