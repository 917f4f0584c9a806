"""Regenerate ``pipelines/data/totalsegmentator.json`` from a TotalSegmentator source tree.

Maintainers run this when a TotalSegmentator release changes its tasks or class names;
the service itself never imports TotalSegmentator. Usage::

    pip download --no-deps --no-binary :all: totalsegmentator==2.18.0 -d /tmp/ts
    tar xzf /tmp/ts/totalsegmentator-2.18.0.tar.gz -C /tmp/ts
    python deploy/make_totalsegmentator_map.py /tmp/ts/totalsegmentator-2.18.0

What is taken (all Apache-2.0, (c) Jakob Wasserthal, TotalSegmentator):
- ``map_tasks_config.TASK_CONFIGS``: each task's dataset ids, trainer, plans, configuration
  and folds per mode (default / fast / fastest);
- ``map_to_binary``: the class names of each dataset's labels (for multi-part tasks the
  part maps), which TotalSegmentator itself uses instead of the weights' dataset.json;
- ``resources/totalsegmentator_snomed_mapping.csv``: SNOMED CT codes and display colours.

Only tasks that TotalSegmentator runs on the whole image are kept (no crop to another
task's output, no cascade, no task-specific post-processing).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

#: Tasks run on the whole image by TotalSegmentator, with the modality they are for.
TASKS = {
    "total": "CT",
    "total_mr": "MR",
    "body": "CT",
    "body_mr": "MR",
    "vertebrae_mr": "MR",
    "vertebrae_body": "CT",
    "breasts": "CT",
    "trunk_cavities": "CT",
    "tissue_types": "CT",
    "tissue_types_mr": "MR",
    "tissue_4_types": "CT",
}
#: TotalSegmentator's own step size (nnunet.py): 0.8 for the total models, else 0.5.
COARSE_STEP_TASKS = {"total", "total_v3", "total_mr"}


def main(source: Path, out: Path) -> None:
    sys.path.insert(0, str(source))
    from totalsegmentator import map_to_binary as m
    from totalsegmentator.map_tasks_config import DEFAULT_CONFIG, TASK_CONFIGS

    parts = {
        "total": (m.class_map_5_parts, m.map_taskid_to_partname_ct),
        "total_mr": (m.class_map_parts_mr, m.map_taskid_to_partname_mr),
    }
    tasks = {}
    for task, modality in TASKS.items():
        config = TASK_CONFIGS[task]
        modes = {}
        for mode, sub in config.get("sub_modes", {"default": config}).items():
            merged = {**DEFAULT_CONFIG, **config, **sub}
            ids = merged["task_id"] if isinstance(merged["task_id"], list) else [merged["task_id"]]
            datasets = []
            for dataset_id in ids:
                if len(ids) > 1:
                    part_maps, part_names = parts[task]
                    labels = part_maps[part_names[dataset_id]]
                else:
                    labels = m.class_map[task]
                datasets.append(
                    {
                        "id": dataset_id,
                        "trainer": merged["trainer"],
                        "plans": merged["plans"] or "nnUNetPlans",
                        "configuration": merged["model"],
                        "folds": merged["folds"],
                        "labels": {str(k): v for k, v in sorted(labels.items())},
                    }
                )
            modes[mode] = {"datasets": datasets}
        tasks[task] = {
            "modality": modality,
            "step_size": 0.8 if task in COARSE_STEP_TASKS else 0.5,
            "commercial_licence": bool(config.get("commercial", False)),
            "modes": modes,
        }
    structures = {}
    csv_path = source / "totalsegmentator" / "resources" / "totalsegmentator_snomed_mapping.csv"
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            rgb = row["DicomRGBColor"]
            structures[row["Structure"]] = {
                "category": _code(row, "SegmentedPropertyCategoryCodeSequence"),
                "type": _code(row, "SegmentedPropertyTypeCodeSequence"),
                "modifier": _code(row, "SegmentedPropertyTypeModifierCodeSequence"),
                "color": "#{:02x}{:02x}{:02x}".format(*map(int, rgb.split(","))) if rgb else None,
            }
    version = next(
        line.split(":", 1)[1].strip()
        for line in (source / "PKG-INFO").read_text().splitlines()
        if line.startswith("Version:")
    )
    document = {
        "source": f"TotalSegmentator {version} (PyPI totalsegmentator): map_tasks_config.py, "
        "map_to_binary.py, resources/totalsegmentator_snomed_mapping.csv",
        "licence": "Apache-2.0, (c) Jakob Wasserthal; the model weights have their own licence",
        "tasks": tasks,
        "structures": structures,
    }
    out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _code(row: dict[str, str], prefix: str) -> list[str] | None:
    value = row[f"{prefix}.CodeValue"]
    if not value:
        return None
    return [value, row[f"{prefix}.CodingSchemeDesignator"], row[f"{prefix}.CodeMeaning"]]


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent
    main(Path(sys.argv[1]), here / "pipelines" / "data" / "totalsegmentator.json")
