"""torch and torchvision stay one matched pair, pinned the same everywhere the install reads.

deploy/install.sh installs the pair from deploy/torch-constraints.txt and passes that file to
every later pip install; pyproject.toml must ask for exactly the same versions, or pip would
either refuse (good) or, with a range, be free to fetch another torch (the thing to prevent).
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
PAIR = ("torch", "torchvision")


def _constraints() -> dict[str, str]:
    lines = (REPO / "deploy" / "torch-constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", f"{line}: pin exactly"
            pins[req.name] = spec.version
    return pins


def test_pyproject_pins_the_same_pair_exactly() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    deps = {Requirement(d).name: Requirement(d) for d in config["project"]["dependencies"]}
    pins = _constraints()
    assert set(pins) == set(PAIR)
    for name in PAIR:
        [spec] = deps[name].specifier
        assert (spec.operator, spec.version) == ("==", pins[name]), f"{name}: {deps[name]}"


def test_the_installed_pair_is_the_pinned_one() -> None:
    """The local label (+cu130, +cpu) names the build; the version must be the pin."""
    for name, pinned in _constraints().items():
        assert version(name).split("+", 1)[0] == pinned, f"{name} {version(name)} != {pinned}"


def test_every_pip_install_of_the_project_is_constrained() -> None:
    script = (REPO / "deploy" / "install.sh").read_text(encoding="utf-8")
    installs = [
        line
        for line in script.splitlines()
        if re.search(r"pip install", line) and not line.lstrip().startswith("#")
    ]
    assert installs, "install.sh installs with pip"
    for line in installs:
        if "--upgrade pip" in line:
            continue
        assert '"${constraints[@]}"' in line, f"unconstrained: {line.strip()}"
    assert "constraints=(-c deploy/torch-constraints.txt)" in script


def test_torchvision_runs_its_cpu_operators() -> None:
    """PyPI's torchvision beside a torch it was not built for fails exactly here."""
    import torch
    from torchvision.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert kept.tolist() == [0, 2]
