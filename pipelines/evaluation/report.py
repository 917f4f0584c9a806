"""The evaluation's outputs: ``evaluation.json`` for machines, ``evaluation.html`` for people.

The HTML is one self-contained file (plots and thumbnails embedded as PNG data URIs, no
script): a FROC curve per detection class, Dice per structure, and a per-case table with
a thumbnail of the key slice (reference in green, prediction in red).
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # no display: a server or a CI runner

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from pipelines.evaluation.evaluate import CaseResult, Evaluation
from pipelines.evaluation.metrics import FROC_FP_RATES

JSON_NAME = "evaluation.json"
HTML_NAME = "evaluation.html"


def as_json(evaluation: Evaluation, settings: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable report (no PHI: UIDs, names of structures and classes)."""
    return {
        "settings": settings,
        "matching_rule": matching_rule(evaluation.match_mm),
        "structures": evaluation.structures,
        "detections": {label: asdict(score) for label, score in evaluation.detections.items()},
        "cases": [_case_json(case) for case in evaluation.cases],
    }


def matching_rule(match_mm: float) -> str:
    return (
        "a detection matches a reference lesion of the same class when its centre lies "
        f"within the lesion's radius or within {match_mm:g} mm of its centre, whichever is "
        "larger; each reference takes at most one detection, best score first"
    )


def _case_json(case: CaseResult) -> dict[str, Any]:
    return {
        "study_uid": case.study_uid,
        "series_uid": case.series_uid,
        "status": case.status,
        "reason": case.reason,
        "pipelines": case.pipelines,
        "seconds": round(case.seconds, 3),
        "structures": {name: asdict(score) for name, score in case.structures.items()},
        "detections": {
            label: {
                "references": match.references,
                "true_positives": len(match.true_positive_scores),
                "false_positives": len(match.false_positive_scores),
            }
            for label, match in case.detections.items()
        },
    }


def write_reports(out: Path, evaluation: Evaluation, settings: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = as_json(evaluation, settings)
    json_path = out / JSON_NAME
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False, default=_finite))
    html_path = out / HTML_NAME
    html_path.write_text(render_html(evaluation, data))
    return json_path, html_path


def _finite(value: object) -> object:
    raise TypeError(f"not serialisable: {type(value).__name__}")


def render_html(evaluation: Evaluation, data: dict[str, Any]) -> str:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(_TEMPLATE)
    return template.render(
        data=data,
        froc=_froc_plot(evaluation) if evaluation.detections else None,
        dice=_dice_plot(evaluation) if evaluation.structures else None,
        thumbnails={case.study_uid: _thumbnail(case) for case in evaluation.cases},
        fmt=_fmt,
    )


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _froc_plot(evaluation: Evaluation) -> str:
    figure, axes = plt.subplots(figsize=(6, 4))
    scans = max(1, sum(case.scored_for_detection for case in evaluation.cases))
    widest = FROC_FP_RATES[-1]
    curves = []
    for label, score in evaluation.detections.items():
        if score.froc_fps_per_scan:
            # MONAI's points, then the operating point with every detection kept (its curve
            # starts above the lowest score); the curve stays flat beyond it.
            all_fps = (score.predictions - score.true_positives) / scans
            fps = np.append(score.froc_fps_per_scan, all_fps)
            sens = np.append(score.froc_sensitivity, score.sensitivity or 0.0)
            order = np.lexsort((sens, fps))
            curves.append((label, fps[order], sens[order], all_fps, score.sensitivity or 0.0))
            widest = max(widest, float(fps.max()))
    for label, fps, sens, all_fps, sensitivity in curves:
        xs, ys = np.append(fps, widest), np.append(sens, sens[-1])
        (line,) = axes.step(xs, ys, where="post", label=label)
        axes.plot([all_fps], [sensitivity], "o", color=line.get_color())
    axes.set_xscale("symlog", linthresh=FROC_FP_RATES[0])
    axes.set_xlim(0, widest)
    axes.set_xlabel("false positives per scan")
    axes.set_ylabel("sensitivity")
    axes.set_ylim(0, 1.05)
    axes.set_title("FROC")
    axes.grid(True, alpha=0.3)
    if evaluation.detections:
        axes.legend()
    return _png(figure)


def _dice_plot(evaluation: Evaluation) -> str:
    names = list(evaluation.structures)
    per_case = [
        [case.structures[name].dice for case in evaluation.cases if name in case.structures]
        for name in names
    ]
    figure, axes = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 4))
    axes.boxplot(per_case, tick_labels=names)
    for index, values in enumerate(per_case, start=1):
        axes.scatter([index] * len(values), values, s=12, alpha=0.6)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("Dice")
    axes.set_title("Dice per structure")
    axes.grid(True, axis="y", alpha=0.3)
    return _png(figure)


def _thumbnail(case: CaseResult) -> str | None:
    """The key slice: most reference voxels, else the first reference lesion's slice."""
    volume, reference, predicted = case.volume, case.reference, case.predicted
    if volume is None or reference is None or predicted is None:
        return None
    index = volume.voxels.shape[0] // 2
    masks = list(reference.structures.values())
    if masks and any(m.any() for m in masks):
        counts = sum(m.sum(axis=(1, 2)) for m in masks)
        index = int(np.argmax(counts))
    elif reference.lesions:
        point = np.append(np.asarray(reference.lesions[0].centre_mm), 1.0)
        index = int(
            np.clip(round((np.linalg.inv(volume.affine) @ point)[0]), 0, len(volume.voxels) - 1)
        )
    figure, axes = plt.subplots(figsize=(2.4, 2.4))
    axes.imshow(volume.voxels[index], cmap="gray", vmin=-1000, vmax=400)
    # Only the structures the reference names: a prediction nobody scores is not drawn.
    for name, mask in reference.structures.items():
        guess = predicted.structures.get(name)
        for shown, colour in ((mask, "lime"), (guess, "red")):
            if shown is not None and shown[index].any():
                axes.contour(shown[index], levels=[0.5], colors=colour, linewidths=0.8)
    for lesions, colour in ((reference.lesions, "lime"), (predicted.lesions, "red")):
        for lesion in lesions:
            point = np.linalg.inv(volume.affine) @ np.append(np.asarray(lesion.centre_mm), 1.0)
            if abs(point[0] - index) <= max(1.0, lesion.diameter_mm / 2 / volume.spacing[0]):
                axes.scatter([point[2]], [point[1]], s=30, facecolors="none", edgecolors=colour)
    axes.set_axis_off()
    return _png(figure)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pacs-annotator evaluation</title>
<style>
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} .failed{color:#a00} .note{color:#555;max-width:60em}
</style></head><body>
<h1>pacs-annotator evaluation</h1>
<p class="note">Pipelines: {{ data.settings.pipelines | join(", ") or "routing" }}.
Cases: {{ data.cases | length }}. Matching rule: {{ data.matching_rule }}.</p>

<h2>Structures</h2>
{% if data.structures %}
<table id="structures"><tr><th>structure</th><th>cases</th><th>Dice mean</th><th>Dice median</th>
<th>HD95 mean (mm)</th><th>HD95 median (mm)</th></tr>
{% for name, s in data.structures.items() %}
<tr><td>{{ name }}</td><td>{{ s.cases }}</td><td>{{ fmt(s.dice_mean) }}</td>
<td>{{ fmt(s.dice_median) }}</td><td>{{ fmt(s.hd95_mm_mean, 1) }}</td>
<td>{{ fmt(s.hd95_mm_median, 1) }}</td></tr>
{% endfor %}</table>
<img id="dice-plot" alt="Dice per structure" src="{{ dice }}">
{% else %}<p>No reference structures.</p>{% endif %}

<h2>Detections</h2>
{% if data.detections %}
<table id="detections"><tr><th>class</th><th>references</th><th>detections</th><th>TP</th>
<th>sensitivity</th><th>precision</th><th>F1</th><th>FROC score</th></tr>
{% for label, d in data.detections.items() %}
<tr><td>{{ label }}</td><td>{{ d.references }}</td><td>{{ d.predictions }}</td>
<td>{{ d.true_positives }}</td><td>{{ fmt(d.sensitivity) }}</td><td>{{ fmt(d.precision) }}</td>
<td>{{ fmt(d.f1) }}</td><td>{{ fmt(d.froc_score) }}</td></tr>
{% endfor %}</table>
<img id="froc-plot" alt="FROC curve" src="{{ froc }}">
{% else %}<p>No reference lesions (no study has an SR reference).</p>{% endif %}

<h2>Cases</h2>
<table id="cases"><tr><th>study</th><th>status</th><th>pipelines</th><th>seconds</th>
<th>scores</th><th>key slice (reference green, prediction red)</th></tr>
{% for case in data.cases %}
<tr><td><code>{{ case.study_uid }}</code></td>
<td class="{{ case.status }}">{{ case.status }}
{%- if case.reason %}: {{ case.reason }}{% endif %}</td>
<td>{{ case.pipelines | join(", ") }}</td><td>{{ fmt(case.seconds, 1) }}</td>
<td>{% for name, s in case.structures.items() %}{{ name }}: Dice {{ fmt(s.dice) }},
HD95 {{ fmt(s.hd95_mm, 1) }} mm<br>{% endfor %}
{% for label, d in case.detections.items() %}{{ label }}: {{ d.true_positives }}/{{ d.references }}
found, {{ d.false_positives }} FP<br>{% endfor %}</td>
<td>{% if thumbnails[case.study_uid] %}<img class="thumb" alt="key slice"
src="{{ thumbnails[case.study_uid] }}">{% endif %}</td></tr>
{% endfor %}</table>
</body></html>
"""
