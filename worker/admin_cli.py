"""Admin subcommands: ``monitor``, ``hash-password``, ``retry``, ``cancel``, ``intake``, ``flower``.

They reuse worker.admin, so the CLI and the web app act the same way and both write the
audit log (the CLI as ``cli:<unix user>``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from worker.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_admin_commands(sub: Any, config: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "monitor", parents=[config], help="run the admin web app: dashboard, /api, /metrics"
    )
    h = sub.add_parser(
        "hash-password", parents=[config], help="hash a password or token for monitor.*_hash"
    )
    h.add_argument("--stdin", action="store_true", help="read the secret from standard input")
    r = sub.add_parser("retry", parents=[config], help="queue a failed or cancelled job again")
    r.add_argument("job_id", metavar="JOB")
    c = sub.add_parser("cancel", parents=[config], help="cancel a job that has not started")
    c.add_argument("job_id", metavar="JOB")
    i = sub.add_parser("intake", parents=[config], help="pause or resume receiving studies")
    i.add_argument("action", choices=["pause", "resume", "status"])
    f = sub.add_parser(
        "flower", parents=[config], help="run Celery Flower on the broker for task-level detail"
    )
    f.add_argument("--port", type=int, default=5555)
    f.add_argument("--address", default="127.0.0.1")
    f.add_argument("flower_args", nargs=argparse.REMAINDER, help="passed on to flower")


def run_admin_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "monitor":
        from worker.monitor.server import serve

        return serve(settings)
    if args.command == "hash-password":
        return _hash_password(args.stdin)
    if args.command == "flower":
        return _flower(settings, args)
    return _action(settings, args)


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


def _action(settings: Settings, args: argparse.Namespace) -> int:
    from scu_scp.spool import Spool
    from worker.admin import ActionError, Admin
    from worker.celery_app import job_enqueuer
    from worker.jobs import JobStore, UnknownJobError
    from worker.ops_store import OpsStore

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
    from worker.embedded_redis import service_broker_url

    broker_url = service_broker_url(settings.broker_url, settings.redis_dir)
    if not broker_url:
        print(
            "pacs-annotator: broker_url is empty: Flower needs the service's Redis URL "
            "(PACS_ANNOTATOR_BROKER_URL), or run it beside a running 'up' with the same config",
            file=sys.stderr,
        )
        return EXIT_USAGE
    extra = [a for a in args.flower_args if a != "--"]
    argv = [
        sys.executable, "-m", "celery", f"--broker={broker_url}", "flower",
        f"--port={args.port}", f"--address={args.address}", *extra,
    ]  # fmt: skip
    os.execv(sys.executable, argv)
    return EXIT_FAILED  # not reached: execv replaces this process
