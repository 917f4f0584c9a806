"""What an nnU-Net v2 model folder holds, read without torch or nnunetv2.

A trained model folder, as ``nnUNetv2_train`` writes it and TotalSegmentator ships it::

    Dataset291_.../nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/
        dataset.json  plans.json  fold_0/checkpoint_final.pth

Settings validation uses this at start-up (in every process, the SCP's too), so it stays
cheap: file checks and plain JSON. ``pipelines/data/totalsegmentator.json`` (made by
``deploy/make_totalsegmentator_map.py`` from TotalSegmentator's own source) says which
folders a TotalSegmentator task needs and what its labels are called, and carries the
SNOMED CT codes and display colours TotalSegmentator publishes for its classes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import BundleError

DATA_FILE = Path(__file__).parent / "data" / "totalsegmentator.json"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
#: ``orientation:`` for the series as stored (i = column, j = row, k = slice).
DICOM_ORDER = "dicom"
_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
#: TotalSegmentator's weights: weights_dir/Dataset<id>_<name>/<trainer>__<plans>__<configuration>
_DATASET_GLOB = "Dataset{id:03d}_*"


class NnunetModelError(BundleError):
    """An nnU-Net model folder cannot be used: a configuration error, found at load time."""


@dataclass(frozen=True)
class ModelFolder:
    """One trained nnU-Net model folder and how to run it.

    ``labels`` names the output label values; empty: take the names from dataset.json.
    """

    path: Path
    folds: tuple[int | str, ...] = (0,)
    checkpoint: str = DEFAULT_CHECKPOINT
    labels: Mapping[int, str] | None = None


def check_model_folder(folder: ModelFolder) -> None:
    """Cheap start-up check: dataset.json, plans.json and each fold's checkpoint exist."""
    path = folder.path
    if not path.is_dir():
        raise NnunetModelError(f"nnU-Net model folder {path} does not exist")
    for name in ("dataset.json", "plans.json"):
        if not (path / name).is_file():
            raise NnunetModelError(f"nnU-Net model folder {path}: no {name}")
    if not folder.folds:
        raise NnunetModelError(f"nnU-Net model folder {path}: no folds to run")
    for fold in folder.folds:
        checkpoint = path / f"fold_{fold}" / folder.checkpoint
        if not checkpoint.is_file():
            raise NnunetModelError(
                f"nnU-Net model folder {path}: fold {fold} has no weights (expected {checkpoint})"
            )


def read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NnunetModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise NnunetModelError(f"{path}: not a JSON object")
    return loaded


def label_names(dataset_json: Mapping[str, Any]) -> dict[int, str]:
    """Output label value -> name, from dataset.json's ``labels`` (background left out).

    Plain label maps give each name its value; region-based models (a name maps to a
    list of labels) output the values of ``regions_class_order``, in the order of the
    regions in ``labels``.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict):
        raise NnunetModelError("dataset.json has no 'labels' object")
    regions = [(name, value) for name, value in labels.items() if name != "background"]
    if any(isinstance(value, list) and len(value) > 1 for _, value in regions):
        order = dataset_json.get("regions_class_order")
        if not isinstance(order, list) or len(order) != len(regions):
            raise NnunetModelError(
                "dataset.json: a region-based model needs one regions_class_order entry per region"
            )
        return {int(value): name for (name, _), value in zip(regions, order, strict=True)}
    names: dict[int, str] = {}
    for name, value in regions:
        number = value[0] if isinstance(value, list) else value
        if name != "ignore" and isinstance(number, int):
            names[number] = name
    return names


@functools.cache
def totalsegmentator_map() -> dict[str, Any]:
    """The shipped TotalSegmentator tasks and structure codes (see the module docstring)."""
    loaded: dict[str, Any] = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    return loaded


@dataclass(frozen=True)
class TotalSegmentatorTask:
    """A TotalSegmentator task resolved to the model folders under a weights directory."""

    task: str
    mode: str
    modality: str
    step_size: float
    folders: tuple[ModelFolder, ...]


def totalsegmentator_task(task: str, mode: str, weights_dir: Path) -> TotalSegmentatorTask:
    """The model folders of ``task`` in ``mode`` under ``weights_dir``, checked to exist.

    Raises ``NnunetModelError`` naming the folder expected when weights are missing:
    nothing is downloaded here or anywhere else.
    """
    tasks = totalsegmentator_map()["tasks"]
    if task not in tasks:
        raise NnunetModelError(
            f"unknown TotalSegmentator task {task!r} (known: {', '.join(sorted(tasks))})"
        )
    modes = tasks[task]["modes"]
    if mode not in modes:
        raise NnunetModelError(
            f"TotalSegmentator task {task!r} has no mode {mode!r} (known: {', '.join(modes)})"
        )
    if not weights_dir.is_dir():
        raise NnunetModelError(f"TotalSegmentator weights_dir {weights_dir} does not exist")
    folders = []
    for dataset in modes[mode]["datasets"]:
        leaf = f"{dataset['trainer']}__{dataset['plans']}__{dataset['configuration']}"
        found = sorted(weights_dir.glob(_DATASET_GLOB.format(id=dataset["id"])))
        if not found:
            raise NnunetModelError(
                f"TotalSegmentator task {task!r}: no weights for dataset {dataset['id']} "
                f"(expected {weights_dir}/Dataset{dataset['id']:03d}_*/{leaf}; download them "
                f"with TotalSegmentator's totalseg_download_weights -t {task})"
            )
        folder = ModelFolder(
            path=found[0] / leaf,
            folds=tuple(dataset["folds"]),
            labels={int(k): str(v) for k, v in dataset["labels"].items()},
        )
        check_model_folder(folder)
        folders.append(folder)
    return TotalSegmentatorTask(
        task=task,
        mode=mode,
        modality=str(tasks[task]["modality"]),
        step_size=float(tasks[task]["step_size"]),
        folders=tuple(folders),
    )


@dataclass(frozen=True)
class StructureCode:
    """A class name's codes as TotalSegmentator publishes them: (value, scheme, meaning)."""

    category: tuple[str, str, str]
    property_type: tuple[str, str, str]
    modifier: tuple[str, str, str] | None
    color: str | None


def structure_code(name: str) -> StructureCode | None:
    """TotalSegmentator's SNOMED CT coding and colour of a class name, None if unknown."""
    found = totalsegmentator_map()["structures"].get(name)
    if not found or not found.get("type") or not found.get("category"):
        return None
    return StructureCode(
        category=_triple(found["category"]),
        property_type=_triple(found["type"]),
        modifier=_triple(found["modifier"]) if found.get("modifier") else None,
        color=found.get("color"),
    )


def _triple(values: Sequence[str]) -> tuple[str, str, str]:
    value, scheme, meaning = values
    return str(value), str(scheme), str(meaning)


def parse_folds(values: Iterable[int | str]) -> tuple[int | str, ...]:
    """Fold numbers, or ``all`` (nnU-Net's model trained on every case)."""
    folds: list[int | str] = []
    for value in values:
        if value == "all" or (isinstance(value, int) and value >= 0):
            folds.append(value)
        elif isinstance(value, str) and value.isdigit():
            folds.append(int(value))
        else:
            raise ValueError(f"fold {value!r} is not a fold number or 'all'")
    return tuple(folds)


def check_orientation(code: str) -> str:
    """``dicom`` or three patient direction letters, one per body axis (``RAS``, ``LPS``)."""
    if code == DICOM_ORDER:
        return code
    upper = code.upper()
    if len(upper) != 3 or not set(upper) <= set(_AXIS) or len({_AXIS[c] for c in upper}) != 3:
        raise ValueError(
            f"orientation {code!r} must be 'dicom' or one of L/R, P/A, I/S each (e.g. RAS)"
        )
    return upper
