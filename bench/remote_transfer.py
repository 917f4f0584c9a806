"""Benchmark (not a test): how long a study takes to reach a remote worker, and its results
to come back, against plain copies of the same bytes measured in the same run.

A CT study (``--slices`` instances of 512 x 512, about 0.5 MB each) is sealed in a central
spool and its job claimed; the central monitor app is served by uvicorn over HTTPS (a test
CA) on 127.0.0.1, as `pacs-annotator monitor` with ``monitor.tls_*`` serves it. Timed,
interleaved, ``--repeats`` rounds each (median reported):

- ours: ``CentralClient.fetch_study`` (listing with SHA-256 computed by the central node,
  each file downloaded, hashed, fsynced, renamed; the folder fsynced and renamed);
- peer "https GET": the same files downloaded one request each with the same httpx client,
  into memory, nothing checked or written (the transfer floor over this TLS stack);
- peer "copytree": ``shutil.copytree`` of the sealed folder on the same disk (what a shared
  mount could at best cost, without any check);
- and the upload back: ``CentralClient.commit_results`` of a results folder of
  ``--result-mb`` (a SEG of that size plus manifest), against a copytree of it.

Run: .venv/bin/python bench/remote_transfer.py [--slices 200] [--repeats 5] [--result-mb 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trustme  # noqa: E402
import uvicorn  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests.support.jobs import spool_study  # noqa: E402
from tests.support.phantom import make_ct_phantom  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from worker.config import Settings, load_settings  # noqa: E402
from worker.jobs.store import JobStore  # noqa: E402
from worker.jobs.worker_tokens import WorkerTokenStore  # noqa: E402
from worker.monitor.app import create_monitor_app  # noqa: E402
from worker.run.processing import Runtime  # noqa: E402
from worker.run.transfer import CentralClient  # noqa: E402

MB = 1024**2


def _serve(settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_monitor_app(settings),
        host="127.0.0.1",
        port=settings.monitor.port,
        log_config=None,
        log_level="warning",
        ssl_certfile=settings.monitor.tls_certificate,
        ssl_keyfile=settings.monitor.tls_private_key,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


def _median(run: Callable[[], object], repeats: int, reset: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        reset()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--result-mb", type=int, default=20)
    args = p.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="pa-bench-remote-"))
    try:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        port = free_port()
        central = load_settings(
            None,
            data_dir=root / "central",
            monitor={
                "port": port,
                "tls_certificate": str(root / "cert.pem"),
                "tls_private_key": str(root / "key.pem"),
            },
        )
        store = JobStore(central.effective_database_url)
        token = WorkerTokenStore(store.engine).create("bench", "bench")
        (root / "token").write_text(token)
        remote = load_settings(
            None,
            data_dir=root / "remote",
            database_url=central.effective_database_url,
            worker={
                "central_url": f"https://127.0.0.1:{port}",
                "central_token_file": str(root / "token"),
                "central_ca_file": str(root / "ca.pem"),
            },
        )
        server = _serve(central)

        from scu_scp.spool import Spool

        rt = Runtime(central, store, Spool(central.spool_dir), {}, lambda node, ds: None)  # type: ignore[arg-type,return-value]
        phantom = make_ct_phantom(
            slices=args.slices, size=512, pixel_spacing=0.7, study_uid=generate_uid()
        )
        job_id = spool_study(rt, phantom.datasets)
        store.claim(job_id, lease_seconds=3600)
        sealed = rt.spool.open_sealed(job_id).path
        files = sorted(sealed.glob("*/*.dcm"))
        study_bytes = sum(f.stat().st_size for f in files)

        client = CentralClient(remote)
        raw = httpx.Client(
            base_url=f"https://127.0.0.1:{port}/remote/v1",
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(root / "ca.pem")),
        )
        names = [f.relative_to(sealed).as_posix() for f in files]

        def raw_get() -> None:
            for name in names:
                raw.get(f"/jobs/{job_id}/study/{name}").raise_for_status()

        copy_target = root / "copy"

        def copy() -> None:
            shutil.copytree(sealed, copy_target)

        fetch = _median(
            lambda: client.fetch_study(job_id), args.repeats, lambda: client.discard(job_id)
        )
        get = _median(raw_get, args.repeats, lambda: None)
        tree = _median(copy, args.repeats, lambda: shutil.rmtree(copy_target, ignore_errors=True))

        results = root / "results-src"
        results.mkdir()
        uid = generate_uid()
        (results / f"{uid}.dcm").write_bytes(b"\0" * (args.result_mb * MB))
        (results / "manifest.json").write_text(json.dumps({"outputs": [uid], "outcomes": []}))
        committed = central.results_dir / job_id

        def commit() -> None:
            assert client.commit_results(job_id, results)

        upload = _median(commit, args.repeats, lambda: shutil.rmtree(committed, ignore_errors=True))
        copy_results = root / "results-copy"
        results_tree = _median(
            lambda: shutil.copytree(results, copy_results),
            args.repeats,
            lambda: shutil.rmtree(copy_results, ignore_errors=True),
        )
        server.should_exit = True
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mb, r = study_bytes / MB, args.result_mb
    print(f"study: {len(files)} instances, {mb:.1f} MB; median of {args.repeats}")
    rows = [
        ("fetch_study (ours, verified)", fetch, mb, None),
        ("peer: https GET, nothing checked", get, mb, fetch),
        ("peer: copytree on this disk", tree, mb, fetch),
        ("commit_results (ours, verified)", upload, r, None),
        ("peer: copytree of the results", results_tree, r, upload),
    ]
    print(f"{'':<34} {'seconds':>8} {'MB/s':>8} {'ours / peer':>12}")
    for label, seconds, size, ours in rows:
        ratio = f"{ours / seconds:>11.2f}x" if ours is not None else ""
        print(f"{label:<34} {seconds:>8.3f} {size / seconds:>8.1f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
