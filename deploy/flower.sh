#!/usr/bin/env bash
# Run Celery Flower beside pacs-annotator, for task-level detail (workers, tasks, rates).
#   deploy/flower.sh CONFIG.yaml [FLOWER OPTIONS...]
# Beside `pacs-annotator up` it finds the embedded Redis from data_dir/redis/url; with
# broker_url set in the config it uses that. It listens on 127.0.0.1:5555 unless told
# otherwise (--port, --address). Flower's UI has no login of its own: keep it on loopback,
# or pass --basic-auth=USER:PASSWORD. Its /api answers 401 unless auth is configured or
# FLOWER_UNAUTHENTICATED_API=true is set.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -ge 1 ] || { echo "usage: $0 CONFIG.yaml [FLOWER OPTIONS...]" >&2; exit 2; }
config="$1"; shift
port="${FLOWER_PORT:-5555}"
address="${FLOWER_ADDRESS:-127.0.0.1}"
exec .venv/bin/pacs-annotator flower --config "$config" --port "$port" --address "$address" -- "$@"
