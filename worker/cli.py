"""The ``pacs-annotator`` command line. Command and option names are stable: admins script them."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from worker import __version__
from worker.config import (
    Settings,
    SettingsError,
    load_settings,
    with_worker_options,
    worker_hostname,
)
from worker.jobs.broker import require_broker_url

if TYPE_CHECKING:  # the commands import what they need when they run
    from pipelines.base import Pipeline

log = logging.getLogger("pacs_annotator")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: What ``jobs --json`` prints of each job (``worker.jobs.store.job_record``), in this order.
_JOBS_JSON_FIELDS = (
    "id",
    "state",
    "study_uid",
    "accession_number",
    "calling_ae",
    "instances",
    "attempts",
    "error",
    "pipelines",
    "outcomes",
    "delivered",
    "received_at",
    "started_at",
    "finished_at",
)


def _configure_logging(level: str) -> None:
    from worker.service.logs import configure_logging

    configure_logging(level)  # one line per record: no DICOM value can forge one
    # highdicom logs every attribute it copies; its warnings are enough.
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # Alembic narrates every plugin and context it sets up; our migrations log the upgrade.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # httpx logs every request's URL (a remote worker's downloads: one line per instance).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # This highdicom warning quotes the patient's name: no PHI in logs.
    warnings.filterwarnings("ignore", message=r".*unlikely to represent the intended person name")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pacs-annotator",
        description="Annotate PACS studies: receive DICOM, run pipelines, store SEG back.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config", type=Path, help="YAML settings file (see deploy/config.example.yaml)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "up", parents=[config], help="run everything on this machine: SCP, a worker, embedded Redis"
    )
    sub.add_parser("scp", parents=[config], help="run the DICOM receiver (needs broker_url)")
    w = sub.add_parser("worker", parents=[config], help="run a Celery worker that processes jobs")
    w.add_argument("--concurrency", type=int, help="worker processes (default: worker.concurrency)")
    w.add_argument("--device", help="cpu, cuda or cuda:N for this worker's models (worker.device)")
    w.add_argument(
        "--queues", help="comma-separated queues to take jobs from (worker.queues; default: all)"
    )

    s = sub.add_parser(
        "send", parents=[config], help="C-STORE every DICOM file under DIR to a node"
    )
    s.add_argument("directory", type=Path, metavar="DIR")
    s.add_argument("--to", metavar="NAME", help="a destination from the settings")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--aet", help="called AE title (with --host/--port)")

    j = sub.add_parser("jobs", parents=[config], help="list jobs, newest first")
    j.add_argument("--state", action="append", default=[], help="only jobs in this state")
    j.add_argument("--study", help="only jobs of this Study Instance UID")
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--json", action="store_true", help="machine-readable output")

    wk = sub.add_parser(
        "workers",
        parents=[config],
        help="list worker processes: host, device, queues, current job, jobs per hour",
    )
    wk.add_argument("--json", action="store_true", help="machine-readable output")

    a = sub.add_parser(
        "annotate", parents=[config], help="pull a study from a DICOMweb source and queue it"
    )
    a.add_argument("--source", required=True, metavar="NAME", help="a source from the settings")
    a.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")

    r = sub.add_parser(
        "run", parents=[config], help="run pipelines on a local series folder, no network"
    )
    r.add_argument("directory", type=Path, metavar="DIR")
    r.add_argument("--out", type=Path, required=True, metavar="OUTDIR")
    r.add_argument("--pipeline", metavar="NAME", help="run this pipeline instead of the routing")
    r.add_argument("--device", help="cpu, cuda or cuda:N for the models (worker.device)")
    r.add_argument(
        "--outputs",
        metavar="KINDS",
        help="comma-separated result objects to write: seg, sr, rtstruct, gsps, kos, sc "
        "(default: delivery.outputs)",
    )

    e = sub.add_parser(
        "evaluate",
        parents=[config],
        help="score the pipelines on studies with reference SEG, RTSTRUCT or SR annotations",
    )
    e.add_argument("directory", type=Path, metavar="DIR", help="studies and their references")
    e.add_argument("--out", type=Path, required=True, metavar="OUTDIR")
    e.add_argument("--pipeline", metavar="NAME", help="run this pipeline instead of the routing")
    e.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="TARGET=NAME[,NAME...]",
        help="count these structures or lesion classes as TARGET "
        '(e.g. "Lungs=Lung-Left,Lung-Right"); repeatable',
    )
    e.add_argument(
        "--match-mm",
        type=float,
        default=10.0,
        help="a detection within this distance of a reference lesion's centre (or inside "
        "its radius) matches it (default 10)",
    )
    e.add_argument("--device", help="cpu, cuda or cuda:N for the models (worker.device)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser(
        "monitor", parents=[config], help="run the admin web app: dashboard, /api, /metrics"
    )
    h = sub.add_parser(
        "hash-password", parents=[config], help="hash a password or token for monitor.*_hash"
    )
    h.add_argument("--stdin", action="store_true", help="read the secret from standard input")
    from worker.admin.cli import add_admin_commands

    add_admin_commands(sub, config)
    from worker.admin.tokens_cli import add_token_commands

    add_token_commands(sub, config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(settings.log_level)
    if args.command not in _WRITES_ONLY_WHERE_TOLD:
        from worker.service.logs import restrict_new_files

        restrict_new_files()  # data files 0600, folders 0700, in children too
    handler = _COMMANDS[args.command]
    try:
        return handler(settings, args)
    except SettingsError as exc:  # found when a component starts (e.g. TLS files)
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from worker.service.processes import stop_on_signals
    from worker.service.up import run_up

    return run_up(settings, args.config, stop_on_signals())


def _cmd_scp(settings: Settings, args: argparse.Namespace) -> int:
    from worker.service.processes import stop_on_signals
    from worker.service.scp import run_scp

    require_broker_url(
        settings.broker_url,
        "'scp' alone needs a Redis URL (or use 'up', which starts an embedded redis-server)",
    )
    return run_scp(settings, stop_on_signals())


def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    require_broker_url(settings.broker_url, "a worker needs a Redis URL")
    settings = with_worker_options(settings, device=args.device, queues=args.queues)
    if settings.worker.central_url:
        from worker.run.transfer import check_central

        check_central(settings)  # a refused token stops the worker here (exit status 2)
    from worker.jobs.queues import worker_queues
    from worker.run.heartbeat import install_heartbeat
    from worker.run.tasks import worker_app

    app = worker_app(settings)
    install_heartbeat(settings, worker_queues(settings))
    concurrency = args.concurrency or settings.worker.concurrency
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--concurrency={concurrency}",
            f"--queues={','.join(worker_queues(settings))}",
            "--pool=prefork",
            f"--hostname={worker_hostname(settings.worker.device)}@%h",
        ]
    )
    return EXIT_OK


def _cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from scu_scp.models import DeliveryError, DicomNode
    from scu_scp.scu import send_files

    if args.to:
        if args.to not in settings.destinations:
            print(f"pacs-annotator: unknown destination {args.to!r}", file=sys.stderr)
            return EXIT_USAGE
        from worker.delivery.senders import destination_node

        d = settings.destinations[args.to]
        if d.type != "dicom":
            print(f"pacs-annotator: {args.to} is not a dicom destination", file=sys.stderr)
            return EXIT_USAGE
        node = destination_node(d)
    elif args.host and args.port and args.aet:
        node = DicomNode(args.aet, args.host, args.port)
    else:
        print("pacs-annotator: give --to NAME, or --host, --port and --aet", file=sys.stderr)
        return EXIT_USAGE
    paths = sorted(p for p in args.directory.rglob("*") if p.is_file())
    if not paths:
        print(f"pacs-annotator: no files under {args.directory}", file=sys.stderr)
        return EXIT_FAILED
    try:
        result = send_files(node, paths, calling_ae=settings.scp.ae_title)
    except DeliveryError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for failure in result.failed:
        print(f"failed {failure.sop_instance_uid}: {failure.error}", file=sys.stderr)
    sent = len(result.instances) - len(result.failed)
    print(
        f"sent {sent} of {len(result.instances)} instances "
        f"to {node.ae_title}@{node.host}:{node.port}"
    )
    return EXIT_OK if result.ok else EXIT_FAILED


def _cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from worker.jobs.store import JobState, JobStore, job_record

    try:
        states = [JobState(s) for s in args.state]
    except ValueError:
        known = ", ".join(s.value for s in JobState)
        print(f"pacs-annotator: --state takes one of {known}", file=sys.stderr)
        return EXIT_USAGE
    store = JobStore(settings.effective_database_url)
    jobs = store.list(states=states, study_uid=args.study, limit=args.limit)
    if args.json:
        rows = [{k: rec[k] for k in _JOBS_JSON_FIELDS} for rec in map(job_record, jobs)]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from scu_scp.redact import escape_controls  # a received value must not drive the terminal

    print(f"{'JOB':<28} {'STATE':<10} {'ACCESSION':<16} {'AE':<16} {'N':>5}  STUDY / ERROR")
    for j in jobs:
        print(
            f"{j.id:<28} {j.state.value:<10} {escape_controls(j.accession_number)[:16]:<16} "
            f"{escape_controls(j.calling_ae):<16} {j.instance_count:>5}  {j.study_uid}"
        )
        if j.error:
            print(f"{'':<28} {escape_controls(j.error)}")
    return EXIT_OK


def _cmd_workers(settings: Settings, args: argparse.Namespace) -> int:
    """The workers the monitor lists, from their heartbeats in the job database."""
    from worker.jobs.ops_store import OpsStore
    from worker.jobs.store import JobStore, utc_now
    from worker.monitor.fleet import format_workers_table, worker_records

    store = JobStore(settings.effective_database_url)
    try:
        records = worker_records(
            store, OpsStore(store.engine), utc_now(), settings.monitor.worker_stale_seconds
        )
    finally:
        store.close()
    print(json.dumps(records, indent=2) if args.json else format_workers_table(records))
    return EXIT_OK


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.errors import DeviceOutOfMemoryError
    from pipelines.output_kinds import check_kinds
    from pipelines.routing import RoutingRule
    from pipelines.runner import annotate_study

    settings = with_worker_options(settings, device=args.device, queues=None)
    pipelines = _local_pipelines(settings, args)
    if pipelines is None:
        return EXIT_USAGE
    outputs = settings.delivery.outputs
    if args.outputs is not None:
        outputs = tuple(kind.strip() for kind in args.outputs.split(",") if kind.strip())
        try:
            check_kinds(outputs)
        except ValueError as exc:
            print(f"pacs-annotator: --outputs: {exc}", file=sys.stderr)
            return EXIT_USAGE
    rules: tuple[RoutingRule, ...] = settings.routing_rules
    paths = sorted(p for p in args.directory.rglob("*") if p.is_file())
    try:
        result = annotate_study(
            paths,
            rules=rules,
            pipelines=pipelines,
            software_version=__version__,
            only=args.pipeline,
            outputs=outputs,
            options=settings.delivery.outputs_options.output_options(),
        )
    except DeviceOutOfMemoryError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    args.out.mkdir(parents=True, exist_ok=True)
    for ds in result.outputs:
        target = args.out / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(target, enforce_file_format=True)
        print(f"wrote {target}")
    for o in result.outcomes:
        detail = f": {o.reason}" if o.reason else ""
        print(f"series {o.series_uid} ({o.modality}) {o.pipeline or '-'} {o.status}{detail}")
    return EXIT_FAILED if result.failures else EXIT_OK


def _cmd_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    from pipelines.errors import DeviceOutOfMemoryError
    from pipelines.evaluation.evaluate import Study, evaluate_studies
    from pipelines.evaluation.report import write_reports

    try:
        mapping = _name_map(args.map)
    except ValueError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.match_mm > 0:
        print("pacs-annotator: --match-mm must be > 0", file=sys.stderr)
        return EXIT_USAGE
    settings = with_worker_options(settings, device=args.device, queues=None)
    pipelines = _local_pipelines(settings, args)
    if pipelines is None:
        return EXIT_USAGE

    def progress(items: Iterable[Study]) -> Iterable[Study]:
        from tqdm import tqdm

        listed = list(items)  # a known total: the bar shows studies done of all
        bar: Iterable[Study] = tqdm(listed, desc="evaluate", unit="study", disable=args.no_progress)
        return bar

    try:
        evaluation = evaluate_studies(
            args.directory,
            rules=settings.routing_rules,
            pipelines=pipelines,
            software_version=__version__,
            only=args.pipeline,
            mapping=mapping,
            match_mm=args.match_mm,
            progress=progress,
        )
    except DeviceOutOfMemoryError as exc:  # as `run`: the device is too small for the model
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report_settings = {
        "pipelines": [args.pipeline] if args.pipeline else [],
        "map": mapping,
        "match_mm": args.match_mm,
        "version": __version__,
    }
    json_path, html_path = write_reports(args.out, evaluation, report_settings)
    scored = sum(case.status == "scored" for case in evaluation.cases)
    print(f"{scored} of {len(evaluation.cases)} studies scored")
    for name, s in evaluation.structures.items():
        print(f"structure {name}: Dice mean {s['dice_mean']:.3f} over {s['cases']} case(s)")
    for label, d in evaluation.detections.items():
        sensitivity = "-" if d.sensitivity is None else f"{d.sensitivity:.2f}"
        precision = "-" if d.precision is None else f"{d.precision:.2f}"
        print(f"detections {label}: sensitivity {sensitivity}, precision {precision}")
    print(f"wrote {json_path}\nwrote {html_path}")
    failed = [case for case in evaluation.cases if case.status == "failed"]
    return EXIT_FAILED if failed else EXIT_OK


def _local_pipelines(settings: Settings, args: argparse.Namespace) -> dict[str, Pipeline] | None:
    """The configured pipelines for ``run``/``evaluate``; None (message printed) when
    ``--pipeline`` names none of them or ``DIR`` is not a folder."""
    from worker.run.bundles import configured_pipelines

    pipelines = configured_pipelines(settings)
    if args.pipeline and args.pipeline not in pipelines:
        known = ", ".join(sorted(pipelines))
        print(
            f"pacs-annotator: unknown pipeline {args.pipeline!r} (known: {known})", file=sys.stderr
        )
        return None
    if not args.directory.is_dir():
        print(f"pacs-annotator: {args.directory} is not a directory", file=sys.stderr)
        return None
    return pipelines


def _name_map(values: Sequence[str]) -> dict[str, list[str]]:
    """``TARGET=A,B`` options as {TARGET: [A, B]}; a name may feed one target only."""
    mapping: dict[str, list[str]] = {}
    seen: set[str] = set()
    for value in values:
        target, sep, names = value.partition("=")
        sources = [n.strip() for n in names.split(",") if n.strip()]
        if not sep or not target.strip() or not sources:
            raise ValueError(f"--map {value!r}: expected TARGET=NAME[,NAME...]")
        for name in sources:
            if name in seen:
                raise ValueError(f"--map: {name!r} is mapped twice")
            seen.add(name)
        mapping.setdefault(target.strip(), []).extend(sources)
    return mapping


def _cmd_admin(settings: Settings, args: argparse.Namespace) -> int:
    from worker.admin.cli import run_admin_command

    return run_admin_command(settings, args)


def _cmd_worker_token(settings: Settings, args: argparse.Namespace) -> int:
    from worker.admin.tokens_cli import run_token_command

    return run_token_command(settings, args)


def _cmd_monitor(settings: Settings, args: argparse.Namespace) -> int:
    from worker.monitor.server import serve

    return serve(settings)


def _cmd_hash_password(settings: Settings, args: argparse.Namespace) -> int:
    return _hash_password(args.stdin)


def _hash_password(from_stdin: bool) -> int:
    from worker.monitor.auth import hash_secret

    if from_stdin:
        secret = sys.stdin.readline().rstrip("\n")
    else:
        secret = getpass.getpass("password or token: ")
        if getpass.getpass("again: ") != secret:
            print("pacs-annotator: the two entries differ", file=sys.stderr)
            return EXIT_USAGE
    if not secret:
        print("pacs-annotator: empty password", file=sys.stderr)
        return EXIT_USAGE
    print(hash_secret(secret))
    return EXIT_OK


def _cmd_annotate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.jobs.store import JobState
    from worker.sources.pull import PullError, annotate_from_source

    if args.source not in settings.sources:
        known = ", ".join(sorted(settings.sources)) or "none configured"
        print(f"pacs-annotator: unknown source {args.source!r} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    try:
        job = annotate_from_source(settings, args.source, args.study)
    except PullError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if job.state is JobState.RECEIVED:
        print(f"job {job.id} recorded ({job.instance_count} instances); the service queues it")
    else:
        print(f"job {job.id} {job.state.value}: study {job.study_uid}, {job.instance_count} inst.")
    return EXIT_OK


#: Commands that write only where the user points them; every other one keeps umask 077.
_WRITES_ONLY_WHERE_TOLD = frozenset({"send", "run", "evaluate", "hash-password"})

_COMMANDS = {
    "up": _cmd_up,
    "scp": _cmd_scp,
    "worker": _cmd_worker,
    "send": _cmd_send,
    "jobs": _cmd_jobs,
    "workers": _cmd_workers,
    "run": _cmd_run,
    "evaluate": _cmd_evaluate,
    "monitor": _cmd_monitor,
    "hash-password": _cmd_hash_password,
    "retry": _cmd_admin,
    "cancel": _cmd_admin,
    "intake": _cmd_admin,
    "flower": _cmd_admin,
    "purge": _cmd_admin,
    "annotate": _cmd_annotate,
    "worker-token": _cmd_worker_token,
}
