"""Benchmark (not a test): ct-lung-nodules on synthetic chests with lesions of every size.

Each scan is the adult-sized chest phantom of ``tests/support/lesions.py`` (1.5 mm pixels,
2.5 mm slices) with, per scan: two attached masses (one per lung, 30-100 mm, against a
random one of chest wall, mediastinum, hilum, diaphragm), one attached nodule (8-25 mm),
free nodules of 4-25 mm, one of each size class, round, lobulated or spiculated at random,
and ``VESSELS_PER_SCAN`` random solid tubes (2-5 mm wide, 10-60 mm long) as distractors.

A detection is a true positive when its centre lies inside a lesion's main sphere (at
least 3 mm from its centre); a second detection inside the same lesion is a duplicate
(counted as a false positive too: one lesion must give one finding); a detection inside
no lesion is a false positive, put in the size class of its own measured diameter.

The peer is the detector of another revision (default: ``main``) measured in the same run
on the same volumes: ``git show REF:pipelines/ct_lung_nodules.py`` loaded beside this
tree's modules. A third column is ``THRESHOLD_PEER``: threshold + connected components +
size filter inside the filled lung mask, no envelope, opening, merging or shape filter.

Run: .venv/bin/python bench/detection_phantom.py [--scans N] [--seed S] [--peer-ref REF]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.ct_basic import segment_body, segment_lungs  # noqa: E402
from pipelines.ct_lung_nodules import THRESHOLD_PEER, detect_nodules  # noqa: E402
from pipelines.volume import Volume, load_series  # noqa: E402
from tests.support.lesions import WALLS, attached_lesion, free_lesion, make_lesion_phantom  # noqa: E402
from tests.support.phantom import LARGE_LUNGS, Lesion, LesionShape, Vessel  # noqa: E402

#: Size classes (mm, lower bound inclusive) for sensitivity and false positives.
CLASSES: tuple[tuple[str, float, float], ...] = (
    ("4-6 mm", 4.0, 6.0),
    ("6-10 mm", 6.0, 10.0),
    ("10-20 mm", 10.0, 20.0),
    ("20-30 mm", 20.0, 30.0),
    ("mass 30-50 mm", 30.0, 50.0),
    ("mass 50-100 mm", 50.0, 100.1),
)
SHAPES: tuple[LesionShape, ...] = ("round", "lobulated", "spiculated")
VESSELS_PER_SCAN = 8

#: A detector: (hu, lungs, body, affine) -> centres and longest diameters (mm).
Detector = Callable[[Volume, np.ndarray, np.ndarray], list[tuple[np.ndarray, float]]]


@dataclass
class Tally:
    lesions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_names(), 0))
    found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_names(), 0))
    attached: list[int] = field(default_factory=lambda: [0, 0])  # found, total (>= 30 mm)
    false_positives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_names(), 0))
    duplicates: int = 0
    seconds: float = 0.0


def _names() -> list[str]:
    return [name for name, _, _ in CLASSES]


def _size_class(diameter: float) -> str:
    for name, low, high in CLASSES:
        if low <= diameter < high:
            return name
    return CLASSES[0][0] if diameter < CLASSES[0][1] else CLASSES[-1][0]


def _scene(rng: np.random.Generator) -> tuple[list[Lesion], list[bool], list[Vessel]]:
    lesions: list[Lesion] = []
    attached: list[bool] = []
    walls = list(WALLS)
    for side in (0, 1):
        size = float(rng.uniform(30.0, 100.0))
        wall = walls[int(rng.integers(len(walls)))]
        lesions.append(attached_lesion(size, wall, side, _shape(rng), rng))
        attached.append(True)
    nodule = attached_lesion(float(rng.uniform(8.0, 25.0)), "chest wall", 1, "round", rng)
    if all(_apart(nodule, other) for other in lesions):
        lesions.append(nodule)
        attached.append(True)
    for _, low, high in CLASSES[:4]:
        size = float(rng.uniform(low, min(high, 29.0)))
        lesions.append(free_lesion(size, _shape(rng), rng, lesions))
        attached.append(False)
    vessels: list[Vessel] = []
    while len(vessels) < VESSELS_PER_SCAN:
        start = rng.uniform([-140.0, -70.0, -110.0], [140.0, 70.0, 110.0])
        direction = rng.normal(size=3)
        end = start + direction / np.linalg.norm(direction) * float(rng.uniform(10.0, 60.0))
        diameter = float(rng.uniform(2.0, 5.0))
        if not (LARGE_LUNGS.contains(start, 4.0) and LARGE_LUNGS.contains(end, 4.0)):
            continue
        if all(
            _segment_distance(np.array(x.centre), start, end) > x.diameter + 8.0 for x in lesions
        ):
            vessels.append(Vessel(_point(start), _point(end), diameter))
    return lesions, attached, vessels


def _shape(rng: np.random.Generator) -> LesionShape:
    return SHAPES[int(rng.integers(len(SHAPES)))]


def _apart(one: Lesion, other: Lesion) -> bool:
    distance = np.linalg.norm(np.array(one.centre) - np.array(other.centre))
    return bool(distance > 0.6 * (one.diameter + other.diameter) + 10.0)


def _segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    axis = end - start
    t = float(np.clip((point - start) @ axis / (axis @ axis), 0.0, 1.0))
    return float(np.linalg.norm(point - (start + t * axis)))


def _point(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _score(
    detections: Sequence[tuple[np.ndarray, float]],
    lesions: Sequence[Lesion],
    attached: Sequence[bool],
    tally: Tally,
) -> None:
    hits = [0] * len(lesions)
    for centre, diameter in detections:
        inside = [
            i
            for i, lesion in enumerate(lesions)
            if np.linalg.norm(centre - np.array(lesion.centre)) <= max(3.0, lesion.diameter / 2)
        ]
        if not inside:
            tally.false_positives[_size_class(diameter)] += 1
            continue
        hits[inside[0]] += 1
        if hits[inside[0]] > 1:
            tally.duplicates += 1
    for lesion, count, is_attached in zip(lesions, hits, attached, strict=True):
        name = _size_class(lesion.diameter)
        tally.lesions[name] += 1
        tally.found[name] += count > 0
        if is_attached and lesion.diameter >= 30.0:
            tally.attached[1] += 1
            tally.attached[0] += count > 0


def _ours(volume: Volume, lungs: np.ndarray, body: np.ndarray) -> list[tuple[np.ndarray, float]]:
    found = detect_nodules(volume.voxels, lungs, volume.affine, body=body)
    return [(np.array(c.centre_mm), c.longest_diameter_mm) for c in found]


def _threshold(
    volume: Volume, lungs: np.ndarray, body: np.ndarray
) -> list[tuple[np.ndarray, float]]:
    found = detect_nodules(volume.voxels, lungs, volume.affine, THRESHOLD_PEER, body)
    return [(np.array(c.centre_mm), c.longest_diameter_mm) for c in found]


def _peer_module(ref: str, folder: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:pipelines/ct_lung_nodules.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "peer_ct_lung_nodules.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("peer_ct_lung_nodules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _peer(module: ModuleType) -> Detector:
    def detect(
        volume: Volume, lungs: np.ndarray, body: np.ndarray
    ) -> list[tuple[np.ndarray, float]]:
        found = module.detect_nodules(volume.voxels, lungs, volume.affine)
        # What the pipeline reports: at most its MAX_DETECTIONS, best first.
        found = found[: module.MAX_DETECTIONS]
        return [(np.array(c.centre_mm), c.longest_diameter_mm) for c in found]

    return detect


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--peer-ref", default="main", help="git revision of the peer detector")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        peer = _peer(_peer_module(args.peer_ref, Path(folder)))
        detectors: dict[str, Detector] = {
            "ct-lung-nodules": _ours,
            f"peer ({args.peer_ref})": peer,
            "threshold": _threshold,
        }
        tallies = {name: Tally() for name in detectors}
        for scan in range(args.scans):
            lesions, attached, vessels = _scene(rng)
            phantom = make_lesion_phantom(lesions, seed=args.seed + scan, vessels=vessels)
            volume = load_series(phantom.datasets)
            body = segment_body(volume.voxels, volume.spacing)
            lungs = segment_lungs(volume.voxels, body, volume.spacing)
            for name, detector in detectors.items():
                started = time.perf_counter()
                detections = detector(volume, lungs, body)
                tallies[name].seconds += time.perf_counter() - started
                _score(detections, lesions, attached, tallies[name])
            print(f"scan {scan + 1}/{args.scans} done", file=sys.stderr)
    _report(tallies, args.scans)
    return 0


def _report(tallies: dict[str, Tally], scans: int) -> None:
    names = list(tallies)
    print(
        f"{scans} scans; per scan 2 attached masses, 1 attached nodule, 4 free nodules, "
        f"{VESSELS_PER_SCAN} tubes\n"
    )
    header = " | ".join(f"sensitivity {n} | FP/scan {n}" for n in names)
    print(f"| size class | lesions | {header} |")
    print("| --- | --- |" + " --- | --- |" * len(names))
    for size in _names():
        total = tallies[names[0]].lesions[size]
        cells = []
        for n in names:
            t = tallies[n]
            sensitivity = f"{t.found[size] / total:.2f}" if total else "-"
            cells.append(f"{sensitivity} | {t.false_positives[size] / scans:.2f}")
        print(f"| {size} | {total} | " + " | ".join(cells) + " |")
    print()
    for n in names:
        t = tallies[n]
        found, total = t.attached
        fps = sum(t.false_positives.values()) / scans
        print(
            f"{n}: attached masses found {found}/{total}, duplicate findings within a lesion "
            f"{t.duplicates}, false positives per scan {fps:.2f}, "
            f"detection time per scan {t.seconds / scans:.2f} s"
        )
    ours, peer = tallies[names[0]], tallies[names[1]]
    all_ours = sum(ours.found.values()) / max(1, sum(ours.lesions.values()))
    all_peer = sum(peer.found.values()) / max(1, sum(peer.lesions.values()))
    print(
        f"\nsensitivity over all lesions, ours / peer: {all_ours:.2f} / {all_peer:.2f}; "
        f"detection time, ours / peer: {ours.seconds / max(peer.seconds, 1e-9):.1f}x"
    )


if __name__ == "__main__":
    raise SystemExit(main())
