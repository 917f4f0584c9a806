"""Benchmark (not a test): the time a job spends around its model, per slice.

A pipeline whose model step is instant (fixed masks and detections, no computation on the
pixels) goes through the real job path, `worker.run.processing.process_job`: the study is
sealed in a spool, a job row is claimed in SQLite, the files are read into a volume, SEG and
SR are built, saved (fsynced) and delivered by C-STORE to a real dcmtk `storescp` on this
machine. What remains is pure overhead: load, write (SEG + SR), save, deliver, and the
rest of the job (job store, scanning).

Series: synthetic 512x512 CT (the phantom of tests/support/phantom.py, its slices repeated
along the axis) of 100 and 300 slices (--slices). The instant pipeline reports 3 segments
(each over half of the slices) and 9 detections, as the chest CT of issue 19 did.

Peers measured in the same run, on the same files:
- load floor: plain `pydicom.dcmread` of every file and `pixel_array` into a stack;
- save floor: the same result bytes written to files, one fsync each;
- deliver floor: one pynetdicom association sending the saved result files by path
  (pynetdicom reads each file and encodes it again).
The ratio ours / floor says how far each stage is from the least it could cost here.

With --peer-tree DIR, the same jobs also run on the code in DIR (a checkout of the code
before a change), the two trees in turns, one job each per round, so both see the same
load; it prints ours / peer per stage. With --builtin, the share of overhead in a CPU job
with the built-in pipelines (ct-basic and ct-lung-nodules) on the 100-slice series too.

Run: .venv/bin/python bench/overhead.py [--slices 100,300] [--repeats 3] [--builtin]
                                        [--peer-tree DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pynetdicom import AE, StoragePresentationContexts

# Whose code runs: this checkout, or (the peer of --peer-tree) the tree named there.
sys.path.insert(0, os.environ.get("PA_BENCH_CODE_TREE") or str(Path(__file__).parents[1]))

from pipelines.base import Pipeline
from pipelines.findings import Algorithm, Detection, Findings, Segment
from pipelines.registry import builtin_pipelines
from pipelines.volume import Volume
from tests.support.jobs import spool_study
from tests.support.phantom import make_ct_phantom
from tests.support.storescp import StoreSCP, start_storescp
from worker.config import load_settings
from worker.config.pipelines import RoutingRuleSettings
from worker.run.processing import Runtime, process_job
from worker.run.tasks import build_runtime
from worker.run.timings import read_timings

CODE_TREE = sys.path[0]
STAGES = ("load", "write", "save", "deliver", "other")
BASE_SLICES = 24  # phantom slices computed; longer series repeat them along the axis
SLICE_SPACING_MM = 1.25


class InstantPipeline:
    """A pipeline whose 'model' answers at once: 3 fixed segments and 9 fixed detections."""

    name = "instant"
    algorithm = Algorithm("instant-model", "1.0")
    modalities = frozenset({"CT"})

    def run(self, volume: Volume) -> Findings:
        depth, rows, cols = volume.voxels.shape
        anatomy = codes.SCT.AnatomicalStructure
        segments = []
        for n, (label, code) in enumerate(
            (("Body", codes.SCT.EntireBody), ("Lungs", codes.SCT.Lung), ("Bone", codes.SCT.Bone))
        ):
            mask = np.zeros(volume.voxels.shape, dtype=bool)
            mask[
                depth // 4 : 3 * depth // 4, rows // 4 + 20 * n : rows // 2, cols // 4 : cols // 2
            ] = True
            segments.append(Segment(label, mask, anatomy, code))
        detections = []
        for n in range(9):
            voxel = np.array([depth * (n + 1) // 10, rows // 2 + 10 * n, cols // 2 - 10 * n, 1.0])
            centre = (volume.affine @ voxel)[:3]
            low, high = centre - 4.0, centre + 4.0
            detections.append(
                Detection(
                    label=f"Nodule {n + 1}",
                    finding_type=codes.SCT.Nodule,
                    centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
                    bbox_min_mm=(float(low[0]), float(low[1]), float(low[2])),
                    bbox_max_mm=(float(high[0]), float(high[1]), float(high[2])),
                    longest_diameter_mm=8.0,
                    volume_mm3=268.0,
                    score=0.9,
                    finding_site=codes.SCT.Lung,
                )
            )
        return Findings(self.algorithm, segments=tuple(segments), detections=tuple(detections))


def make_series(slices: int) -> list[Dataset]:
    """A 512x512 CT series of ``slices`` slices: the phantom's slices repeated along z."""
    base = make_ct_phantom(
        slices=BASE_SLICES, size=512, pixel_spacing=0.7, slice_spacing=SLICE_SPACING_MM
    ).datasets
    series_uid = pydicom.uid.generate_uid()
    out = []
    for k in range(slices):
        ds = copy.deepcopy(base[k % BASE_SLICES])
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-178.85, -178.85, round(k * SLICE_SPACING_MM, 4)]
        out.append(ds)
    return out


def runtime(root: Path, scp: StoreSCP, pipelines: dict[str, Pipeline]) -> Runtime:
    settings = load_settings(
        None,
        data_dir=root / "data",
        destinations={
            "pacs": {
                "ae_title": scp.ae_title,
                "host": "127.0.0.1",
                "port": scp.port,
                "default": True,
            }
        },
    )
    # The instant pipeline is no built-in: route to it without the settings' name check.
    names = tuple(pipelines)
    routing = (RoutingRuleSettings(modality="CT", pipelines=names),)
    settings = settings.model_copy(update={"routing": routing})
    return dataclasses.replace(build_runtime(settings), pipelines=pipelines)


def run_job(rt: Runtime, series: Sequence[Dataset]) -> dict[str, float]:
    """One job through process_job; seconds per stage from its timings.json."""
    job_id = spool_study(rt, series)
    started = time.perf_counter()
    job = process_job(rt, job_id)
    total = time.perf_counter() - started
    if job.state.value != "done":
        raise RuntimeError(f"job {job_id}: {job.state.value}: {job.error}")
    timings = read_timings(rt.settings.results_dir / job_id)
    stages = {s: timings.get(s, 0.0) for s in ("load", "pipelines", "write", "save", "deliver")}
    stages["other"] = total - sum(stages.values())
    stages["total"] = total
    stages["overhead"] = total - stages["pipelines"]
    return stages


def floors(paths: Sequence[Path], results: Path, scp: StoreSCP) -> dict[str, float]:
    """The least each stage could cost here: plain reads, plain writes, one plain send."""
    started = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in paths]
    np.stack([ds.pixel_array for ds in datasets])
    load = time.perf_counter() - started

    outputs = sorted(p for p in results.glob("*.dcm"))
    blobs = [p.read_bytes() for p in outputs]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=results.parent) as tmp:
        for n, blob in enumerate(blobs):
            fd = os.open(Path(tmp) / f"{n}.dcm", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
    save = time.perf_counter() - started

    started = time.perf_counter()
    ae = AE(ae_title="FLOOR")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
    if not assoc.is_established:
        raise RuntimeError("floor: storescp refused the association")
    for path in outputs:
        status = assoc.send_c_store(path)
        if int(status.Status) != 0:
            raise RuntimeError(f"floor: storescp answered 0x{int(status.Status):04X}")
    assoc.release()
    deliver = time.perf_counter() - started
    return {"load": load, "save": save, "deliver": deliver}


def spooled_paths(rt: Runtime) -> list[Path]:
    """The files of the last sealed batch of the series (the floor reads the same files)."""
    batches = sorted(rt.spool.studies.iterdir(), key=lambda p: p.stat().st_mtime)
    return sorted(batches[-1].rglob("*.dcm"))


@contextlib.contextmanager
def storescp(root: Path) -> Iterator[StoreSCP]:
    root.mkdir(parents=True, exist_ok=True)
    yield from start_storescp(root)


def bench_size(slices: int, repeats: int, root: Path) -> dict[str, float]:
    series = make_series(slices)
    with storescp(root / "scp") as scp:
        rt = runtime(root / "svc", scp, {"instant": InstantPipeline()})
        try:
            run_job(rt, series)  # warm-up: imports, first highdicom call
            runs, floor_runs = [], []
            for _ in range(repeats):
                stages = run_job(rt, series)
                runs.append(stages)
                job_dirs = sorted(
                    rt.settings.results_dir.iterdir(), key=lambda p: p.stat().st_mtime
                )
                paths = spooled_paths(rt)
                floor_runs.append(floors(paths, job_dirs[-1], scp))
        finally:
            rt.store.close()
    result = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for k in floor_runs[0]:
        result[f"floor_{k}"] = statistics.median(r[k] for r in floor_runs)
    return result


def bench_builtin(slices: int, root: Path, repeats: int) -> dict[str, float]:
    """A built-in pipelines job: one warm-up, then the median of ``repeats`` per stage
    (a single job varied from 6.8 % to 15.7 % overhead on the shared machine)."""
    series = make_series(slices)
    with storescp(root / "scp") as scp:
        rt = runtime(root / "svc", scp, dict(builtin_pipelines()))
        try:
            run_job(rt, series)  # warm-up
            runs = [run_job(rt, series) for _ in range(repeats)]
        finally:
            rt.store.close()
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per series length (and "builtin"), the median seconds per stage of this code tree."""
    sizes = [int(n) for n in args.slices.split(",")]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pa-bench-overhead-") as tmp:
        for n in sizes:
            print(f"{n} slices ...", flush=True)
            results[str(n)] = bench_size(n, args.repeats, Path(tmp) / f"s{n}")
        if args.builtin:
            results["builtin"] = bench_builtin(
                args.builtin_slices, Path(tmp) / "builtin", args.repeats
            )
    return results


def measure_against(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ours and the peer tree's, one job each in turn (same load on both), medians."""
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"ours": [], "peer": []}
    with tempfile.TemporaryDirectory(prefix="pa-bench-overhead-") as tmp:
        for round_ in range(args.repeats):
            for who, tree in (("peer", args.peer_tree), ("ours", CODE_TREE)):
                out = Path(tmp) / f"{who}{round_}.json"
                command = [sys.executable, __file__, "--slices", args.slices, "--repeats", "1"]
                command += ["--json", str(out), "--builtin-slices", str(args.builtin_slices)]
                command += ["--builtin"] if args.builtin else []
                env = {**os.environ, "PA_BENCH_CODE_TREE": str(Path(tree).resolve())}
                print(f"round {round_ + 1}: {who} ({tree}) ...", flush=True)
                subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
                runs[who].append(json.loads(out.read_text()))

    def medians(which: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        return {
            key: {k: statistics.median(r[key][k] for r in which) for k in which[0][key]}
            for key in which[0]
        }

    return medians(runs["ours"]), medians(runs["peer"])


def print_tables(results: dict[str, dict[str, float]], title: str) -> None:
    print(f"\n{title}: ms per slice\n")
    header = ["slices", *STAGES, "overhead", "total (s)"]
    print("| " + " | ".join(header) + " |")
    print("|" + " ---: |" * len(header))
    for key, r in results.items():
        if key == "builtin":
            continue
        n = int(key)
        cells = [f"{1000 * r[s] / n:.2f}" for s in (*STAGES, "overhead")]
        print(f"| {n} | " + " | ".join(cells) + f" | {r['total']:.2f} |")

    print("\nagainst the floor measured in the same run (ours / floor)\n")
    header = ["slices"]
    for stage in ("load", "save", "deliver"):
        header += [stage, f"floor {stage}", "ratio"]
    print("| " + " | ".join(header) + " |")
    print("|" + " ---: |" * len(header))
    for key, r in results.items():
        if key == "builtin":
            continue
        cells = []
        for s in ("load", "save", "deliver"):
            cells += [
                f"{1000 * r[s]:.0f} ms",
                f"{1000 * r['floor_' + s]:.0f} ms",
                f"{r[s] / r['floor_' + s]:.2f}x",
            ]
        print(f"| {key} | " + " | ".join(cells) + " |")
    builtin = results.get("builtin")
    if builtin is not None:
        share = builtin["overhead"] / builtin["total"]
        print(
            f"\nbuilt-in pipelines (ct-basic + ct-lung-nodules): "
            f"job {builtin['total']:.2f} s, pipelines {builtin['pipelines']:.2f} s, "
            f"overhead {builtin['overhead']:.2f} s = {100 * share:.1f} % of the job "
            "(load {load:.2f}, write {write:.2f}, save {save:.2f}, deliver {deliver:.2f}, "
            "other {other:.2f} s)".format(**builtin)
        )


def print_comparison(ours: dict[str, dict[str, float]], peer: dict[str, dict[str, float]]) -> None:
    print("\nours / peer tree, same rounds (below 1.00x: faster than the peer)\n")
    stages = (*STAGES, "overhead")
    print("| slices | " + " | ".join(stages) + " |")
    print("|" + " ---: |" * (len(stages) + 1))
    for key in ours:
        cells = [f"{ours[key][s] / peer[key][s]:.2f}x" if peer[key][s] else "-" for s in stages]
        print(f"| {key} | " + " | ".join(cells) + " |")
    if "builtin" in ours:
        for who, r in (("peer", peer["builtin"]), ("ours", ours["builtin"])):
            share = 100 * r["overhead"] / r["total"]
            print(f"built-in job, {who}: overhead {r['overhead']:.2f} s = {share:.1f} % of the job")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="100,300", help="series lengths, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed jobs per length (median)")
    parser.add_argument("--builtin", action="store_true", help="also a built-in pipelines job")
    parser.add_argument("--builtin-slices", type=int, default=100)
    parser.add_argument(
        "--peer-tree",
        type=Path,
        help="a checkout of the code before (with this script in its bench/): measured in "
        "turns with this one, --repeats rounds",
    )
    parser.add_argument("--json", type=Path, help="also write the medians to this file")
    args = parser.parse_args(argv)
    if args.peer_tree is not None:
        ours, peer = measure_against(args)
        print_tables(peer, f"peer tree {args.peer_tree}, median of {args.repeats}")
        print_tables(ours, f"this tree, median of {args.repeats}")
        print_comparison(ours, peer)
        return 0
    results = measure(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results))
    print_tables(results, f"instant-model job, median of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
