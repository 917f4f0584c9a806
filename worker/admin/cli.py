"""Admin subcommands: ``retry``, ``cancel``, ``intake``, ``flower``, ``purge``.

They reuse ``worker.admin.actions``, so the CLI and the web app act the same way and both
write the audit log (the CLI as ``cli:<unix user>``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from worker.config import Settings
from worker.jobs.broker import require_broker_url, service_broker_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_admin_commands(sub: Any, config: argparse.ArgumentParser) -> None:
    r = sub.add_parser("retry", parents=[config], help="queue a failed or cancelled job again")
    r.add_argument("job_id", metavar="JOB")
    c = sub.add_parser("cancel", parents=[config], help="cancel a job that has not started")
    c.add_argument("job_id", metavar="JOB")
    i = sub.add_parser("intake", parents=[config], help="pause or resume receiving studies")
    i.add_argument("action", choices=["pause", "resume", "status"])
    p = sub.add_parser(
        "purge", parents=[config], help="remove expired data now (the retention.* settings)"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    f = sub.add_parser(
        "flower", parents=[config], help="run Celery Flower on the broker for task-level detail"
    )
    f.add_argument("--port", type=int, default=5555)
    f.add_argument("--address", default="127.0.0.1")
    f.add_argument("flower_args", nargs=argparse.REMAINDER, help="passed on to flower")


def run_admin_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "flower":
        return _flower(settings, args)
    if args.command == "purge":
        return _purge(settings, args.dry_run)
    return _action(settings, args)


def _purge(settings: Settings, dry_run: bool) -> int:
    """Run the retention purge once and print counts and bytes per kind (no patient data)."""
    from scu_scp.spool import Spool
    from worker.jobs.ops_store import OpsStore
    from worker.jobs.retention import Purger
    from worker.jobs.store import JobStore

    store = JobStore(settings.effective_database_url)
    try:
        purger = Purger(settings, store, OpsStore(store.engine), Spool(settings.spool_dir))
        report = purger.run(dry_run=dry_run, actor=f"cli:{getpass.getuser()}")
    finally:
        store.close()
    verb = "would remove" if dry_run else "removed"
    for item in report.items:
        print(f"{verb} {item.kind.value:<18} {item.name:<28} {item.bytes:>14} bytes  {item.why}")
    for kind, total in report.totals().items():
        print(f"total {kind.value:<18} {total.count:>6} items {total.bytes:>14} bytes")
    if not report.items and not report.audit_entries:
        print("nothing to purge")
    return EXIT_OK


def _action(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here: parsing the command line loads no database or Celery code.
    from scu_scp.spool import Spool
    from worker.admin.actions import ActionError, Admin
    from worker.jobs.ops_store import OpsStore
    from worker.jobs.store import JobStore, UnknownJobError
    from worker.run.celery_app import job_enqueuer

    store = JobStore(settings.effective_database_url)
    ops = OpsStore(store.engine)

    spool = Spool(settings.spool_dir)
    admin = Admin(store, ops, spool, job_enqueuer(settings, spool))
    actor = f"cli:{getpass.getuser()}"
    try:
        if args.command == "retry":
            print(f"job {args.job_id}: {admin.retry(args.job_id, actor).state.value}")
        elif args.command == "cancel":
            print(f"job {args.job_id}: {admin.cancel(args.job_id, actor).state.value}")
        elif args.action == "status":
            print("paused" if ops.intake_paused() else "receiving")
        else:
            admin.set_intake_paused(args.action == "pause", actor)
            print("paused" if args.action == "pause" else "receiving")
    except UnknownJobError:
        print(f"pacs-annotator: no job {args.job_id}", file=sys.stderr)
        return EXIT_FAILED
    except ActionError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    return EXIT_OK


def _flower(settings: Settings, args: argparse.Namespace) -> int:
    broker_url = require_broker_url(
        service_broker_url(settings.broker_url, settings.redis_dir),
        "Flower needs the service's Redis URL (PACS_ANNOTATOR_BROKER_URL), "
        "or run it beside a running 'up' with the same config",
    )
    extra = [a for a in args.flower_args if a != "--"]
    argv = [
        sys.executable, "-m", "celery", "flower",
        f"--port={args.port}", f"--address={args.address}", *extra,
    ]  # fmt: skip
    # In the environment, not on the command line that `ps` shows: the URL has a password.
    os.execve(sys.executable, argv, dict(os.environ, CELERY_BROKER_URL=broker_url))
    return EXIT_FAILED  # not reached: execv replaces this process
