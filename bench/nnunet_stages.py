"""Benchmark (not a test): an nnU-Net job cold and warm on the CPU, per stage.

One job is: read the series into a volume, run the nnU-Net pipeline (nnunetv2's
``nnUNetPredictor``: its preprocessing, sliding window, resampling back) and write the SEG
and SR. The same job runs twice in one fresh process, as a worker runs its first and
second jobs: the cold one also imports nnunetv2 and loads the model (builds the network
from plans.json, reads the checkpoint); the warm one finds it loaded. The ratio
warm/cold is measured in the same run.

Default model: the one the tests build (tests/support/nnunet.py: planned by nnunetv2's
own planner on a 5 mm synthetic dataset, 3d_fullres PlainConvUNet, constructed threshold
weights) on a synthetic 32x96x96 CT at 2.5x2.5x4 mm. Or ``--model-folder DIR --series DIR``
for your own model and series.

Run: .venv/bin/python bench/nnunet_stages.py [--mirroring] [--model-folder DIR --series DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pipelines.nnunet import NnunetPipeline, NnunetSpec
from pipelines.nnunet_files import ModelFolder
from pipelines.routing import RoutingRule
from pipelines.runner import annotate_study
from tests.support.nnunet import build_models, threshold_phantom
from tests.support.studies import write_copy


def _job(pipeline: NnunetPipeline, paths: list[Path], out: Path) -> dict[str, float]:
    started = time.perf_counter()
    result = annotate_study(
        paths,
        rules=(RoutingRule(pipelines=(pipeline.name,)),),
        pipelines={pipeline.name: pipeline},
        software_version="bench",
    )
    if result.failures:
        raise SystemExit(f"job failed: {result.failures}")
    saving = time.perf_counter()
    for ds in result.outputs:
        ds.save_as(out / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    ended = time.perf_counter()
    return {
        "read": result.timings["load"],
        "load": pipeline.timings.get("load", 0.0),
        "inference": pipeline.timings["inference"],
        "postprocess": pipeline.timings["postprocess"],
        "write": result.timings["write"] + (ended - saving),
        "total": ended - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-folder", type=Path)
    parser.add_argument("--series", type=Path)
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring on")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model_folder and args.series:
            folder = args.model_folder
            paths = sorted(p for p in args.series.rglob("*") if p.is_file())
        else:
            print("building the test model with nnunetv2's planner (child process) ...")
            folder = build_models(root / "models").model_folder
            _, paths = write_copy(threshold_phantom("axial"), root / "series")
        pipeline = NnunetPipeline(
            NnunetSpec(
                name="bench",
                folders=(ModelFolder(folder),),
                use_mirroring=args.mirroring,
            ),
            device=args.device,
        )
        (root / "out").mkdir()
        started = time.perf_counter()
        cold = _job(pipeline, paths, root / "out")
        cold["total"] = time.perf_counter() - started  # includes importing nnunetv2
        pipeline.timings.pop("load")
        warm = _job(pipeline, paths, root / "out")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'stage':<12} {'cold job (s)':>13} {'warm job (s)':>13}")
    for stage in ("read", "load", "inference", "postprocess", "write", "total"):
        print(f"{stage:<12} {cold[stage]:>13.2f} {warm.get(stage, 0.0):>13.2f}")
    print(f"warm / cold job time: {warm['total'] / cold['total']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
