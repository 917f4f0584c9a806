"""A PNG that shows an admin at a glance whether a job's results look right.

A few slices of the source series (the ones with detections first, then ones spread over the
segmented range), the SEG's segments overlaid in colour and the SR's detections circled.
Reads the results kept in ``data_dir/results/<job>/`` and the sealed study in the spool.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LONG_AXIS = "103339001"  # SCT "Long Axis", what the SR reports for a detection's diameter
MAX_SLICES = 4
TILE = 256
COLOURS = ((230, 60, 60), (60, 200, 90), (70, 120, 255), (240, 200, 40), (200, 80, 220))


@dataclass
class _Series:
    headers: list[tuple[float, Path, Dataset]] = field(default_factory=list)


def _normal(ds: Dataset) -> npt.NDArray[np.float64]:
    o = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(o[:3], o[3:])


def _key(position: Any) -> tuple[float, ...]:
    return tuple(round(float(v), 2) for v in position)


def _read_headers(paths: list[Path]) -> dict[str, _Series]:
    series: dict[str, _Series] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        z = float(np.dot(_normal(ds), np.asarray(ds.ImagePositionPatient, dtype=float)))
        series.setdefault(str(ds.SeriesInstanceUID), _Series()).headers.append((z, path, ds))
    for s in series.values():
        s.headers.sort(key=lambda item: item[0])
    return series


def _seg_masks(seg: Dataset, positions: dict[tuple[float, ...], int]) -> dict[int, dict[int, Any]]:
    """slice index -> segment number -> boolean mask, for frames on the source grid."""
    frames = np.asarray(seg.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    out: dict[int, dict[int, Any]] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=False):
        where = positions.get(_key(item.PlanePositionSequence[0].ImagePositionPatient))
        if where is None:
            continue
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        slot = out.setdefault(where, {})
        slot[number] = slot.get(number, False) | frame.astype(bool)
    return out


def _detections(sr: Dataset) -> list[tuple[npt.NDArray[np.float64], float]]:
    """(3D point, long axis mm) of each measurement group holding an SCOORD3D point."""
    found: list[tuple[npt.NDArray[np.float64], float]] = []

    def walk(items: Any) -> None:
        for item in items:
            children = item.get("ContentSequence", [])
            point = None
            diameter = 0.0
            for child in children:
                if child.get("ValueType") == "SCOORD3D" and child.get("GraphicType") == "POINT":
                    point = np.asarray(child.GraphicData[:3], dtype=float)
                name = child.get("ConceptNameCodeSequence")
                if child.get("ValueType") == "NUM" and name and name[0].CodeValue == LONG_AXIS:
                    diameter = float(child.MeasuredValueSequence[0].NumericValue)
            if point is not None:
                found.append((point, diameter))
            walk(children)

    walk(sr.get("ContentSequence", []))
    return found


def _window(ds: Dataset) -> tuple[float, float]:
    if str(ds.get("Modality", "")) == "CT":
        return -1000.0, 600.0  # lung to bone in one view: what the built-in pipelines segment
    return float("nan"), float("nan")


def _to_grey(ds: Dataset) -> npt.NDArray[np.uint8]:
    pixels = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1) or 1)
    pixels += float(ds.get("RescaleIntercept", 0) or 0)
    low, high = _window(ds)
    if np.isnan(low):
        low, high = (float(v) for v in np.percentile(pixels, [1, 99]))
    scaled = (np.clip(pixels, low, high) - low) / max(high - low, 1e-6) * 255.0
    return scaled.astype(np.uint8)


def _pick_slices(n: int, masks: dict[int, dict[int, Any]], detected: list[int]) -> list[int]:
    chosen: list[int] = []
    for index in detected:
        if index not in chosen and len(chosen) < MAX_SLICES // 2:
            chosen.append(index)
    segmented = sorted(masks) or list(range(n))
    for q in np.linspace(0.2, 0.8, MAX_SLICES):
        index = segmented[int(q * (len(segmented) - 1))]
        if index not in chosen and len(chosen) < MAX_SLICES:
            chosen.append(index)
    return sorted(chosen)


def render_preview(spool_paths: list[Path], results_dir: Path) -> bytes | None:
    """The PNG, or None when the study has no image series to show."""
    outputs: list[Dataset] = []
    manifest = results_dir / "manifest.json"
    if manifest.exists():
        for uid in json.loads(manifest.read_text())["outputs"]:
            outputs.append(pydicom.dcmread(results_dir / f"{uid}.dcm"))
    series = _read_headers(spool_paths)
    if not series:
        return None
    segs = [ds for ds in outputs if str(ds.SOPClassUID) == SEG_CLASS]
    target = None
    if segs:
        target = str(segs[0].ReferencedSeriesSequence[0].SeriesInstanceUID)
    if target not in series:
        target = max(series, key=lambda uid: len(series[uid].headers))
    headers = series[target].headers
    positions = {_key(ds.ImagePositionPatient): i for i, (_, _, ds) in enumerate(headers)}
    masks: dict[int, dict[int, Any]] = {}
    for seg in segs:
        if str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == target:
            for index, by_segment in _seg_masks(seg, positions).items():
                masks.setdefault(index, {}).update(by_segment)
    first = headers[0][2]
    normal = _normal(first)
    zs = np.asarray([z for z, _, _ in headers])
    circles: dict[int, list[tuple[npt.NDArray[np.float64], float]]] = {}
    for sr in (ds for ds in outputs if str(ds.Modality) == "SR"):
        for point, diameter in _detections(sr):
            index = int(np.argmin(np.abs(zs - float(np.dot(normal, point)))))
            circles.setdefault(index, []).append((point, diameter))
    chosen = _pick_slices(len(headers), masks, sorted(circles))
    tiles = [
        _tile(headers[i][1], i, len(headers), masks.get(i, {}), circles.get(i, [])) for i in chosen
    ]
    sheet = Image.new("RGB", (TILE * len(tiles), TILE), "black")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (k * TILE, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _tile(
    path: Path,
    index: int,
    count: int,
    masks: dict[int, Any],
    circles: list[tuple[npt.NDArray[np.float64], float]],
) -> Image.Image:
    ds = pydicom.dcmread(path)
    grey = _to_grey(ds)
    rgb = np.stack([grey] * 3, axis=-1).astype(float)
    for number, mask in sorted(masks.items()):
        colour = np.asarray(COLOURS[(number - 1) % len(COLOURS)], dtype=float)
        rgb[mask] = rgb[mask] * 0.55 + colour * 0.45
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    o = np.asarray(ds.ImageOrientationPatient, dtype=float)
    origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    for point, diameter in circles:
        x = float(np.dot(point - origin, o[:3])) / col_mm
        y = float(np.dot(point - origin, o[3:])) / row_mm
        radius = max(diameter / 2.0 / col_mm, 4.0) + 4.0
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 0), width=2
        )
    scale = TILE / max(image.width, image.height)
    image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    tile = Image.new("RGB", (TILE, TILE), "black")
    tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    ImageDraw.Draw(tile).text((4, 4), f"slice {index + 1}/{count}", fill=(255, 255, 255))
    return tile
