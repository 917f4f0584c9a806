"""``pacs-annotator worker-token create|list|revoke``: the credentials of remote workers.

Run on the central node (any machine with the job database). A token is printed (or
written to ``--output``, mode 0600) once; the database keeps only its hash. Creating and
revoking are recorded in the audit log as ``cli:<unix user>``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from worker.config import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_token_commands(sub: Any, config: argparse.ArgumentParser) -> None:
    t = sub.add_parser(
        "worker-token",
        parents=[config],
        help="create, list or revoke the token of a remote worker (worker.central_token_file)",
    )
    t.add_argument("action", choices=["create", "list", "revoke"])
    t.add_argument("name", nargs="?", metavar="NAME", help="the worker's name (create, revoke)")
    t.add_argument(
        "--output", type=Path, metavar="FILE", help="create: write the token here (mode 0600)"
    )
    t.add_argument(
        "--replace", action="store_true", help="create: replace the worker's active token"
    )


def run_token_command(settings: Settings, args: argparse.Namespace) -> int:
    from worker.jobs.ops_store import OpsStore
    from worker.jobs.store import JobStore
    from worker.jobs.worker_tokens import TokenError, WorkerTokenStore

    if args.action != "list" and not args.name:
        print(f"pacs-annotator: worker-token {args.action} needs NAME", file=sys.stderr)
        return EXIT_USAGE
    store = JobStore(settings.effective_database_url)
    tokens = WorkerTokenStore(store.engine)
    actor = f"cli:{getpass.getuser()}"
    try:
        if args.action == "list":
            _print_tokens(tokens.list())
            return EXIT_OK
        if args.action == "revoke":
            if not tokens.revoke(args.name):
                print(f"pacs-annotator: worker {args.name} has no active token", file=sys.stderr)
                return EXIT_FAILED
            OpsStore(store.engine).audit(actor, "worker-token-revoke", args.name)
            print(f"worker {args.name}: token revoked (refused from its next request on)")
            return EXIT_OK
        token = tokens.create(args.name, actor, replace=args.replace)
        OpsStore(store.engine).audit(actor, "worker-token-create", args.name)
    except TokenError as exc:
        print(f"pacs-annotator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    if args.output is None:
        print(token)
        return EXIT_OK
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(token + "\n")
    print(f"worker {args.name}: token written to {args.output} (mode 0600)")
    return EXIT_OK


def _print_tokens(tokens: list[Any]) -> None:
    print(f"{'WORKER':<24} {'STATE':<8} {'CREATED':<20} {'LAST USED':<20} BY")
    for t in tokens:
        state = "active" if t.active else "revoked"
        used = t.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if t.last_used_at else "never"
        created = t.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{t.name:<24} {state:<8} {created:<20} {used:<20} {t.created_by}")
