"""Benchmark (not a test): ct-lung-nodules on synthetic chests with known nodules.

Each scan is the unit-test phantom (body, lungs, spine, bowel gas) at 1.5 mm pixels and
2 mm slices, with one sphere of each size in ``SIZES_MM`` placed at random inside the
lungs (clear of the pleura and of each other) and ``VESSELS_PER_SCAN`` random solid
tubes (2-5 mm wide, 10-60 mm long) as vessel-like distractors. A detection is a true
positive when its centre lies within max(3 mm, radius) of a sphere centre; every other
detection is a false positive. The peer is the same detector with the opening and the
shape and density filters off: plain threshold + connected components + size filter.

Run: .venv/bin/python bench/detection_phantom.py [--scans N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ct_basic import segment_body, segment_lungs
from pipelines.ct_lung_nodules import (
    THRESHOLD_PEER,
    Candidate,
    DetectorSettings,
    detect_nodules,
)
from pipelines.volume import load_series
from tests.support.phantom import (
    LUNG_CENTRES,
    LUNG_SEMI_AXES,
    Nodule,
    Vessel,
    make_ct_phantom,
)

SIZES_MM = (4.0, 6.0, 8.0, 10.0, 15.0, 20.0)
VESSELS_PER_SCAN = 8
Z_LIMIT_MM = 55.0  # the grid spans +-59 mm along z


@dataclass
class Tally:
    found: dict[float, int]
    false_positives: int = 0
    seconds: float = 0.0


def _inside_lung(point: np.ndarray, margin: float) -> bool:
    if abs(point[2]) > Z_LIMIT_MM - margin:
        return False
    a, b, c = (s - margin for s in LUNG_SEMI_AXES)
    for centre in LUNG_CENTRES:
        d = point - np.array(centre)
        if (d[0] / a) ** 2 + (d[1] / b) ** 2 + (d[2] / c) ** 2 <= 1.0:
            return True
    return False


def _random_point(rng: np.random.Generator, margin: float) -> np.ndarray:
    while True:
        point = rng.uniform([-110.0, -50.0, -Z_LIMIT_MM], [110.0, 60.0, Z_LIMIT_MM])
        if _inside_lung(point, margin):
            return point


def _segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    axis = end - start
    t = float(np.clip((point - start) @ axis / (axis @ axis), 0.0, 1.0))
    return float(np.linalg.norm(point - (start + t * axis)))


def _scene(rng: np.random.Generator) -> tuple[list[Nodule], list[Vessel]]:
    nodules: list[Nodule] = []
    for size in sorted(SIZES_MM, reverse=True):
        while True:
            centre = _random_point(rng, size / 2 + 4.0)
            clear = all(
                np.linalg.norm(centre - np.array(n.centre)) > (size + n.diameter) / 2 + 8.0
                for n in nodules
            )
            if clear:
                nodules.append(Nodule((centre[0], centre[1], centre[2]), size))
                break
    vessels: list[Vessel] = []
    while len(vessels) < VESSELS_PER_SCAN:
        diameter = float(rng.uniform(2.0, 5.0))
        start = _random_point(rng, 3.0)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        end = start + direction * float(rng.uniform(10.0, 60.0))
        if not _inside_lung(end, 3.0):
            continue
        clear = all(
            _segment_distance(np.array(n.centre), start, end) > n.diameter / 2 + diameter + 4.0
            for n in nodules
        )
        if clear:
            vessels.append(
                Vessel((start[0], start[1], start[2]), (end[0], end[1], end[2]), diameter)
            )
    return nodules, vessels


def _score(candidates: Sequence[Candidate], nodules: Sequence[Nodule], tally: Tally) -> None:
    matched: set[int] = set()
    for candidate in candidates:
        centre = np.array(candidate.centre_mm)
        hit = next(
            (
                i
                for i, n in enumerate(nodules)
                if i not in matched
                and np.linalg.norm(centre - np.array(n.centre)) <= max(3.0, n.diameter / 2)
            ),
            None,
        )
        if hit is None:
            tally.false_positives += 1
        else:
            matched.add(hit)
            tally.found[nodules[hit].diameter] += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    detectors: dict[str, DetectorSettings] = {
        "ct-lung-nodules": DetectorSettings(),
        "threshold peer": THRESHOLD_PEER,
    }
    tallies = {name: Tally(found=dict.fromkeys(SIZES_MM, 0)) for name in detectors}
    for scan in range(args.scans):
        nodules, vessels = _scene(rng)
        phantom = make_ct_phantom(
            slices=60,
            size=224,
            pixel_spacing=1.5,
            slice_spacing=2.0,
            seed=args.seed + scan,
            nodules=nodules,
            vessels=vessels,
        )
        volume = load_series(phantom.datasets)
        body = segment_body(volume.voxels, volume.spacing)
        lungs = segment_lungs(volume.voxels, body, volume.spacing)
        for name, settings in detectors.items():
            started = time.perf_counter()
            candidates = detect_nodules(volume.voxels, lungs, volume.affine, settings)
            tallies[name].seconds += time.perf_counter() - started
            _score(candidates, nodules, tallies[name])
    _report(tallies, args.scans)
    return 0


def _report(tallies: dict[str, Tally], scans: int) -> None:
    names = list(tallies)
    print(f"{scans} scans, one sphere per size per scan, {VESSELS_PER_SCAN} tubes per scan\n")
    print("| sphere diameter | " + " | ".join(f"sensitivity {n}" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for size in SIZES_MM:
        cells = [f"{tallies[n].found[size] / scans:.2f}" for n in names]
        print(f"| {size:g} mm | " + " | ".join(cells) + " |")
    required = [s for s in SIZES_MM if s >= 6.0]
    overall = [sum(tallies[n].found[s] for s in required) / (scans * len(required)) for n in names]
    print("| all >= 6 mm | " + " | ".join(f"{v:.2f}" for v in overall) + " |")
    fps = [tallies[n].false_positives / scans for n in names]
    print("| false positives / scan | " + " | ".join(f"{v:.2f}" for v in fps) + " |")
    secs = [tallies[n].seconds / scans for n in names]
    print("| detection time / scan (s) | " + " | ".join(f"{v:.3f}" for v in secs) + " |")
    ours, peer = names[0], names[1]
    fp_ours, fp_peer = fps[0], fps[1]
    ratio = f"{fp_peer / fp_ours:.1f}x" if fp_ours else "inf (ours: 0)"
    print(
        f"\nfalse positives per scan, {peer} / {ours}: {ratio}; "
        f"sensitivity >= 6 mm, {ours} / {peer}: {overall[0] / max(overall[1], 1e-9):.2f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
