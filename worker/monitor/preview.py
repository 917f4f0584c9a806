"""A PNG that shows an admin at a glance whether a job's results look right.

A few slices of the source series, drawn as the radiologist's viewer will draw them: the
key slices of the SR's detections first, each with its outline, then slices spread over the
segmented range with the SEG's segments in their recommended display colours. Our own SEG
and SR are read back with highdicom (``segread``, ``srread``), from the results kept in
``data_dir/results/<job>/``, over the sealed study in the spool.

Bounded: an instance with more than ``max_pixels`` (rows x columns x frames x samples, read
from its header before any pixel data) is not decoded; the others are decoded, then
stride-sliced to at most ``WORK_SIDE`` pixels on the long side before any float or colour
work. An instance that cannot be decoded gets a tile with a note instead of failing the
whole preview.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

log = logging.getLogger(__name__)

MAX_SLICES = 4
TILE = 256
#: Long side of the image that windowing and overlays work on (tiles are TILE).
WORK_SIDE = 512
#: The setting's default: a 4096 x 4096 image decodes to 32 MB of 16-bit pixels.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Notes about skipped instances are drawn in orange.
NOTE = (255, 160, 0)
#: What pydicom and its decoders raise for pixel data they cannot turn into an image
#: (truncated, wrong length, unknown transfer syntax, missing decoder, bad header values).
DECODE_ERRORS = (
    InvalidDicomError,
    OSError,
    ValueError,
    KeyError,
    AttributeError,
    IndexError,
    TypeError,
    NotImplementedError,
    RuntimeError,
)
#: Detections are drawn in yellow, as OHIF draws SR annotations.
MARK = (255, 255, 0)
#: Used for a segment without a recommended display colour (a SEG we did not write).
FALLBACK = (230, 60, 60)

Mask = npt.NDArray[np.bool_]
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: Dataset


@dataclass(frozen=True)
class _Mark:
    """One SR region on its image: (column, row) image coordinates."""

    graphic_type: str
    points: npt.NDArray[np.float64]
    label: str


def pixel_count(ds: Dataset) -> int:
    """Decoded samples of an instance, from its header alone."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * frames * samples


def render_preview(
    spool_paths: list[Path], results_dir: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes | None:
    """The PNG, or None when the study has no image series to show."""
    series = _read_series(spool_paths)
    if not series:
        return None
    notes: list[str] = []
    try:
        segs, reports = _read_results(results_dir)
    except DECODE_ERRORS as exc:
        log.warning("preview of %s: results unreadable: %s", results_dir.name, exc)
        segs, reports, notes = [], [], ["results unreadable: no overlays"]
    target = next(
        (
            uid
            for seg in segs
            for uid in (str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence)
            if uid in series
        ),
        max(series, key=lambda uid: len(series[uid])),
    )
    slices = series[target]
    index_of = {str(s.header.SOPInstanceUID): i for i, s in enumerate(slices)}
    if any(pixel_count(s.header) > max_pixels for s in slices):
        segs = []  # the SEG of such a series would be as large: not decoded either
    try:
        overlays = _overlays(segs, [str(s.header.SOPInstanceUID) for s in slices])
        marks = _marks(reports, index_of)
    except DECODE_ERRORS as exc:
        log.warning("preview of %s: results not drawable: %s", results_dir.name, exc)
        overlays, marks = [], {}
        notes.append("results not drawable: no overlays")
    segmented = sorted(
        {int(i) for _, masks in overlays for i in np.flatnonzero(masks.any(axis=(1, 2)))}
    )
    chosen = _pick_slices(len(slices), segmented, sorted(marks))
    tiles = [
        _safe_tile(
            slices[i],
            i,
            len(slices),
            [(c, m[i]) for c, m in overlays],
            marks.get(i, []),
            max_pixels,
        )
        for i in chosen
    ]
    sheet = Image.new("RGB", (TILE * len(tiles), TILE), "black")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (k * TILE, 0))
    for line, note in enumerate(notes):
        ImageDraw.Draw(sheet).text((4, TILE - 14 * (line + 1)), note, fill=NOTE)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _marks(
    reports: list[hd.sr.MeasurementReport], index_of: dict[str, int]
) -> dict[int, list[_Mark]]:
    """The SR's image regions per slice index of the shown series."""
    marks: dict[int, list[_Mark]] = {}
    drawn: set[str] = set()
    for report in reports:
        for group in report.get_planar_roi_measurement_groups():
            roi, uid = group.roi, str(group.tracking_uid)
            if not isinstance(roi, hd.sr.ImageRegion) or uid in drawn:
                continue  # a detection's second group repeats its box
            drawn.add(uid)
            index = index_of.get(roi.ContentSequence[0].referenced_sop_instance_uid)
            if index is not None:
                points = np.asarray(roi.value, dtype=float)
                label = group.tracking_identifier or ""
                marks.setdefault(index, []).append(_Mark(roi.graphic_type.value, points, label))
    return marks


def _read_series(paths: list[Path]) -> dict[str, list[_Slice]]:
    """Image series of the study, each in order along its slice normal."""
    series: dict[str, list[tuple[float, _Slice]]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
                continue
            orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
            depth = float(
                np.cross(orientation[:3], orientation[3:])
                @ np.asarray(ds.ImagePositionPatient, dtype=float)
            )
        except DECODE_ERRORS:
            continue  # not an image we can place: passed over, as non-DICOM files are
        series.setdefault(str(ds.SeriesInstanceUID), []).append((depth, _Slice(path, ds)))
    return {
        uid: [s for _, s in sorted(items, key=lambda item: item[0])]
        for uid, items in series.items()
    }


def _read_results(
    results_dir: Path,
) -> tuple[list[hd.seg.Segmentation], list[hd.sr.MeasurementReport]]:
    manifest = results_dir / "manifest.json"
    if not manifest.exists():
        return [], []
    segs: list[hd.seg.Segmentation] = []
    reports: list[hd.sr.MeasurementReport] = []
    for uid in json.loads(manifest.read_text())["outputs"]:
        path = results_dir / f"{uid}.dcm"
        sop_class = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        if sop_class.SOPClassUID == SegmentationStorage:
            segs.append(hd.seg.segread(path))
        elif sop_class.SOPClassUID == Comprehensive3DSRStorage:
            content = hd.sr.srread(path).content
            if isinstance(content, hd.sr.MeasurementReport):
                reports.append(content)
    return segs, reports


def _overlays(
    segs: list[hd.seg.Segmentation], source_uids: list[str]
) -> list[tuple[Colour, npt.NDArray[np.bool_]]]:
    """(display colour, mask over the series' slices) of every segment on this series."""
    overlays: list[tuple[Colour, npt.NDArray[np.bool_]]] = []
    for seg in segs:
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        if not referenced & set(source_uids):
            continue
        pixels = seg.get_pixels_by_source_instance(
            [uid for uid in source_uids if uid in referenced]
        ).astype(bool)
        on_series = np.zeros((len(source_uids), *pixels.shape[1:]), dtype=bool)
        on_series[[i for i, uid in enumerate(source_uids) if uid in referenced]] = pixels
        for number, item in enumerate(seg.SegmentSequence):
            colour = FALLBACK
            if "RecommendedDisplayCIELabValue" in item:
                lab = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue)
                colour = lab.to_rgb()
            overlays.append((colour, on_series[..., number]))
    return overlays


def _pick_slices(n: int, segmented: list[int], marked: list[int]) -> list[int]:
    """Key slices of detections first (up to half), then slices over the segmented range."""
    chosen: list[int] = []
    for index in marked:
        if index not in chosen and len(chosen) < MAX_SLICES // 2:
            chosen.append(index)
    spread = segmented or list(range(n))
    for q in np.linspace(0.2, 0.8, MAX_SLICES):
        index = spread[int(q * (len(spread) - 1))]
        if index not in chosen and len(chosen) < MAX_SLICES:
            chosen.append(index)
    return sorted(chosen)


def _window(ds: Dataset) -> tuple[float, float]:
    if str(ds.get("Modality", "")) == "CT":
        return -1000.0, 600.0  # lung to bone in one view: what the built-in pipelines segment
    return float("nan"), float("nan")


def _to_grey(ds: Dataset, step: int) -> npt.NDArray[np.uint8]:
    """One frame, every ``step``-th pixel, windowed to 8 bits: float work on the small image."""
    raw = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raw = raw[raw.shape[0] // 2]
    if raw.ndim == 3:  # colour (rows, columns, samples): its luminance is enough here
        raw = raw.mean(axis=-1)
    pixels: npt.NDArray[np.float64] = np.asarray(
        apply_modality_lut(np.ascontiguousarray(raw[::step, ::step]), ds), dtype=np.float64
    )
    low, high = _window(ds)
    if np.isnan(low):
        low, high = (float(v) for v in np.percentile(pixels, [1, 99]))
    scaled = (np.clip(pixels, low, high) - low) / max(high - low, 1e-6) * 255.0
    return scaled.astype(np.uint8)


def _note_tile(index: int, count: int, note: str) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), "black")
    draw = ImageDraw.Draw(tile)
    draw.text((4, 4), f"slice {index + 1}/{count}", fill=(255, 255, 255))
    draw.text((4, TILE // 2), note, fill=NOTE)
    return tile


def _safe_tile(
    item: _Slice,
    index: int,
    count: int,
    overlays: list[tuple[Colour, Mask]],
    marks: list[_Mark],
    max_pixels: int,
) -> Image.Image:
    """A tile, or a note tile for an instance too large or too broken to draw."""
    uid = str(item.header.get("SOPInstanceUID", "?"))
    size = pixel_count(item.header)
    if size > max_pixels:
        log.warning("preview: instance %s not drawn: %d pixels > %d", uid, size, max_pixels)
        return _note_tile(index, count, f"skipped: {size} pixels > {max_pixels}")
    try:
        return _tile(item.path, index, count, overlays, marks)
    except DECODE_ERRORS as exc:
        log.warning("preview: instance %s not drawn: %s: %s", uid, type(exc).__name__, exc)
        return _note_tile(index, count, "skipped: pixel data unreadable")


def _tile(
    path: Path,
    index: int,
    count: int,
    overlays: list[tuple[Colour, Mask]],
    marks: list[_Mark],
) -> Image.Image:
    ds = pydicom.dcmread(path)
    step = max(1, math.ceil(max(int(ds.Rows), int(ds.Columns)) / WORK_SIDE))
    grey = _to_grey(ds, step)
    rgb = np.stack([grey] * 3, axis=-1).astype(np.float32)
    for colour, mask in overlays:
        small = mask[::step, ::step]
        rgb[small] = rgb[small] * 0.55 + np.asarray(colour, dtype=np.float32) * 0.45
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for mark in marks:
        # Image coordinates put pixel centres at +0.5; PIL puts them at whole numbers.
        points = [((float(x) - 0.5) / step, (float(y) - 0.5) / step) for x, y in mark.points]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=MARK, width=2)
        else:
            draw.line(points, fill=MARK, width=2)
        x, y = min(points, key=lambda p: p[1])
        draw.text((x, max(0.0, y - 12)), mark.label, fill=MARK)
    scale = TILE / max(image.width, image.height)
    image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    tile = Image.new("RGB", (TILE, TILE), "black")
    tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    ImageDraw.Draw(tile).text((4, 4), f"slice {index + 1}/{count}", fill=(255, 255, 255))
    return tile
