"""Benchmark (not a test): per-stage timings of one bundle job, and cold vs warm model.

One job is: read the series into a volume, load the model (cold start only), the bundle's
pre-processing, inference (its own inferer, e.g. sliding window), post-processing (its
Invertd/argmax + mapping to the source grid), writing the SEG and SR (building them and
saving to disk) and delivering them by C-STORE to a real local Storage SCP (pynetdicom,
the annotator's own receiver in a temporary spool). The same job runs twice in one
process: the first with a cold model (parse + build + load weights), the second warm, as a
worker runs its second job. The ratio cold/warm is measured in the same run.

Default bundle: the MONAI Model Zoo spleen config from ../shared/data (weights of the
right shape, seeded; timings do not depend on the weight values) on the real 41-slice CT;
without ../shared/data a small UNet bundle on the synthetic phantom. Or --bundle DIR
--series DIR for your own.

Run: .venv/bin/python bench/pipeline_stages.py [--bundle DIR --series DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.bundle import BundlePipeline, BundleSpec
from pipelines.routing import RoutingRule
from pipelines.runner import annotate_study
from pipelines.volume import load_series, scan_files
from scu_scp.models import DicomNode
from scu_scp.scp import StorageSCP
from scu_scp.scu import send_datasets
from scu_scp.spool import Spool
from tests.conftest import SHARED_DATA
from tests.support.bundles import SMALL_UNET, segmentation_config, write_bundle
from tests.support.phantom import Nodule, make_ct_phantom

STAGES = ("read", "load", "preprocess", "inference", "postprocess", "write", "deliver")


def default_inputs(work: Path) -> tuple[Path, Path, str]:
    """(bundle dir, series dir, description) for the default run."""
    zoo = SHARED_DATA / "monai-bundle-configs" / "spleen_ct_segmentation"
    ct = SHARED_DATA / "ct-abdomen-crlm1004"
    if zoo.is_dir() and ct.is_dir():
        from monai.bundle.config_parser import ConfigParser

        bundle = work / "spleen_ct_segmentation"
        shutil.copytree(zoo, bundle)
        (bundle / "models").mkdir()
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        torch.manual_seed(0)
        torch.save(
            parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt"
        )
        return bundle, ct, "Model Zoo spleen_ct_segmentation config on the real CT (41 x 512 x 512)"
    window = {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "overlap": 0.25}
    torch.manual_seed(0)
    from monai.bundle.config_parser import ConfigParser

    config = segmentation_config(SMALL_UNET, pixdim=(2.0, 2.0, 2.0), inferer=window)
    network = ConfigParser(config).get_parsed_content("network_def")
    bundle = write_bundle(
        work / "small_unet",
        config,
        channel_def={"0": "background", "1": "sphere"},
        state_dict=network.state_dict(),
    )
    series = work / "series"
    series.mkdir()
    phantom = make_ct_phantom(slices=48, size=128, nodules=[Nodule((-40.0, 0.0, 0.0), 30.0)])
    for i, ds in enumerate(phantom.datasets):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    return bundle, series, "small UNet bundle on the synthetic phantom (48 x 128 x 128)"


def run_job(
    pipeline: BundlePipeline, paths: list[Path], out: Path, node: DicomNode
) -> dict[str, float]:
    """One job's stage timings (load is 0 when the model is already warm)."""
    timings = dict.fromkeys(STAGES, 0.0)
    start = time.perf_counter()
    series = scan_files(paths).series
    for datasets in series.values():
        load_series(datasets)
    timings["read"] = time.perf_counter() - start
    loads = pipeline.load_count
    start = time.perf_counter()
    pipeline.load()
    timings["load"] = time.perf_counter() - start if pipeline.load_count > loads else 0.0
    start = time.perf_counter()
    result = annotate_study(
        paths,
        rules=(RoutingRule(pipelines=(pipeline.name,)),),
        pipelines={pipeline.name: pipeline},
        software_version="bench",
    )
    for ds in result.outputs:
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    total = time.perf_counter() - start
    for stage in ("preprocess", "inference", "postprocess"):
        timings[stage] = pipeline.timings[stage]
    # annotate_study reads the series again: count that once, under "read".
    timings["write"] = max(0.0, total - timings["read"] - sum(timings[s] for s in STAGES[2:5]))
    if result.failures:
        raise SystemExit(f"job failed: {result.failures}")
    start = time.perf_counter()
    delivered = send_datasets(node, list(result.outputs), calling_ae="BENCH")
    timings["deliver"] = time.perf_counter() - start
    if not delivered.ok:
        raise SystemExit(f"delivery failed: {delivered}")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--series", type=Path)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.bundle and args.series:
            bundle, series, what = args.bundle, args.series, f"{args.bundle.name} on {args.series}"
        else:
            bundle, series, what = default_inputs(work)
        paths = sorted(p for p in series.rglob("*.dcm") if p.is_file())
        scp = StorageSCP(
            ae_title="BENCH_SCP",
            host="127.0.0.1",
            port=0,
            spool=Spool(work / "spool"),
            on_complete=lambda _study: None,
            quiet_seconds=3600,
        )
        scp.start()
        node = DicomNode("BENCH_SCP", "127.0.0.1", scp.port)
        pipeline = BundlePipeline(BundleSpec(name="bench", path=bundle), device=args.device)
        jobs = []
        for n in range(2):
            out = work / f"out{n}"
            out.mkdir()
            jobs.append(run_job(pipeline, paths, out, node))
        scp.stop()
    cold, warm = jobs
    print(f"{what}; device {args.device}; torch threads {torch.get_num_threads()}")
    print("\n| stage | cold job (s) | warm job (s) |\n| --- | ---: | ---: |")
    for stage in STAGES:
        print(f"| {stage} | {cold[stage]:.2f} | {warm[stage]:.2f} |")
    total_cold, total_warm = sum(cold.values()), sum(warm.values())
    print(f"| **total** | **{total_cold:.2f}** | **{total_warm:.2f}** |")
    print(
        f"\ncold / warm job time: {total_cold / total_warm:.2f}x; model load is "
        f"{cold['load'] / total_cold:.0%} of the cold job; inference is "
        f"{warm['inference'] / total_warm:.0%} of the warm job"
    )
    print(f"model loads in this process: {pipeline.load_count}")


if __name__ == "__main__":
    main()
