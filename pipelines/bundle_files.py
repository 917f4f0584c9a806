"""What a bundle directory holds, read without torch or MONAI and without running its code.

Settings validation uses this at start-up (in every process, the SCP's too), so it must
stay cheap: only file checks and the plain-JSON metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import BundleError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
WEIGHTS = ("models/model.pt", "models/model.ts")


def config_file(path: Path, config: str) -> Path:
    """``configs/<config>.json|yaml|yml`` of the bundle at ``path``; ``BundleError`` if none."""
    for suffix in CONFIG_SUFFIXES:
        candidate = path / "configs" / f"{config}{suffix}"
        if candidate.is_file():
            return candidate
    raise BundleError(f"bundle {path}: no configs/{config}.json or .yaml")


def check_bundle_dir(path: Path, config: str = "inference") -> None:
    """Cheap start-up check (runs no bundle code): the config and the weights exist."""
    if not path.is_dir():
        raise BundleError(f"bundle directory {path} does not exist")
    config_file(path, config)
    if not any((path / weights).is_file() for weights in WEIGHTS):
        raise BundleError(f"bundle {path}: no weights ({' or '.join(WEIGHTS)})")


def bundle_metadata(path: Path) -> dict[str, Any]:
    """``configs/metadata.json`` as plain JSON ({} when absent)."""
    meta = path / "configs" / "metadata.json"
    if not meta.is_file():
        return {}
    try:
        loaded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {path}: cannot read configs/metadata.json: {exc}") from exc
    return loaded if isinstance(loaded, dict) else {}
