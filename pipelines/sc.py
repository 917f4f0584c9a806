"""Findings -> a derived Secondary Capture series: the overlay burned into copies of the slices.

For the viewer that shows nothing but images. Each capture is a source slice in its display
window, in RGB, with, in the colours of the SEG (``pipelines.marks.overlay_layers``):
- each segment tinted (``FILL_OPACITY``) and outlined on its boundary pixels;
- each detection's ellipse on every slice its box crosses, labelled (finding, size) on the
  slice nearest its centre;
and a legend (colour -> structure, and the warning) in a strip below the image, so no
pixel of the slice is hidden and pixel (row, column) of the capture is pixel (row, column)
of its source slice. Captures are labelled as derived and not for primary diagnosis
(SeriesDescription, ImageComments, BurnedInAnnotation YES) and reference their source
slice (Source Image Sequence). Text is drawn by Pillow with its built-in font.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from pipelines.colors import RGB
from pipelines.findings import Findings
from pipelines.marks import (
    Ellipse,
    Layers,
    Window,
    copy_body_part,
    detection_caption,
    detection_ellipses,
    fallback_window,
    overlay_layers,
    source_window,
)
from pipelines.seg import copy_required_source_attributes
from pipelines.sr_root import equipment
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: How much of a segment's colour is mixed into the grey of the pixels inside it.
FILL_OPACITY = 0.25
#: What every capture says of itself (ImageComments, the legend).
NOT_FOR_DIAGNOSIS = "NOT FOR PRIMARY DIAGNOSIS"
#: The series' description: derived, not for primary diagnosis, and the algorithm's name.
SERIES_DESCRIPTION = "AI overlay, derived, not for primary diagnosis ({name})"
#: Purpose of reference of the source slice (CID 7202 "Source Image Purposes of Reference").
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation


@dataclass(frozen=True)
class _Style:
    """Sizes that follow the image's size, so a 512-pixel slice gets legible text."""

    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    line_height: int
    line_width: int
    padding: int

    @classmethod
    def for_image(cls, rows: int, columns: int) -> _Style:
        size = max(10, min(rows, columns) // 32)
        return cls(
            font=ImageFont.load_default(size=size),
            line_height=size + max(2, size // 3),
            line_width=max(1, min(rows, columns) // 256),
            padding=max(2, size // 3),
        )


def build_sc(
    volume: Volume,
    findings: Findings,
    *,
    series_uid: str,
    series_number: int,
    software_version: str,
    sop_uid_for: Callable[[int], str],
    every_slice: bool,
) -> list[Dataset]:
    """One RGB capture per slice with something drawn on it (every slice if ``every_slice``).

    ``sop_uid_for(k)`` gives the SOP Instance UID of the capture of slice ``k`` (axis-0
    index of ``volume``), so a rerun gives the same UIDs. Raises
    ``pipelines.marks.NothingToDrawError`` when there is nothing to draw and ``ValueError``
    when a mask does not fit the volume.
    """
    layers = overlay_layers(volume, findings)
    ellipses: dict[int, list[tuple[Ellipse, RGB, str]]] = {}
    for detection in findings.detections:
        color = layers.detection_rgb(detection)
        caption = detection_caption(detection, volume)
        for ellipse in detection_ellipses(volume, detection):
            ellipses.setdefault(ellipse.slice_index, []).append((ellipse, color, caption))
    marked = set(ellipses)
    for segment in layers.segments:
        marked.update(int(k) for k in np.flatnonzero(segment.mask.any(axis=(1, 2))))
    indices = range(volume.voxels.shape[0]) if every_slice else sorted(marked)
    rows, columns = volume.voxels.shape[1:]
    style = _Style.for_image(rows, columns)
    legend = _legend_entries(layers)
    title = f"AI overlay: {findings.algorithm.name}"
    fallback: Window | None = None
    captures = []
    for k in indices:
        window = source_window(volume.datasets[k])
        if window is None:
            fallback = fallback or fallback_window(volume)
            window = fallback
        pixels = render_capture(
            volume, k, layers, ellipses.get(k, []), window, title, legend, style
        )
        captures.append(
            _capture(
                volume,
                k,
                pixels,
                findings,
                series_uid,
                series_number,
                software_version,
                sop_uid_for(k),
            )
        )
    logger.info(
        "built %d secondary capture(s) for series %s (%s)",
        len(captures),
        volume.series_uid,
        "every slice" if every_slice else "slices with findings",
    )
    return captures


def render_capture(
    volume: Volume,
    k: int,
    layers: Layers,
    ellipses: list[tuple[Ellipse, RGB, str]],
    window: Window,
    title: str,
    legend: list[tuple[RGB, str]],
    style: _Style,
) -> npt.NDArray[np.uint8]:
    """Slice ``k`` windowed to grey, the overlay burned in, the legend strip below it."""
    grey = window.to_unit(volume.voxels[k]) * 255.0
    if volume.datasets[k].get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255.0 - grey
    image = np.repeat(grey[..., None], 3, axis=2)
    for segment, color in zip(layers.segments, layers.segment_rgb, strict=True):
        inside = segment.mask[k]
        if not inside.any():
            continue
        tint = np.array(color, dtype=np.float32)
        image[inside] = (1.0 - FILL_OPACITY) * image[inside] + FILL_OPACITY * tint
        edge = inside & ~ndimage.binary_erosion(inside, border_value=0)
        image[edge] = tint
    rows, columns = grey.shape
    strip = _strip_height(legend, style)
    width = max(columns, _legend_width(title, legend, style))
    canvas = Image.new("RGB", (width, rows + strip))
    canvas.paste(Image.fromarray(np.rint(image).astype(np.uint8), "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for ellipse, color, caption in ellipses:
        # DICOM image coordinates put a pixel's centre at +0.5; Pillow's at its index.
        cx, cy = ellipse.centre[0] - 0.5, ellipse.centre[1] - 0.5
        box = (
            cx - ellipse.half_width,
            cy - ellipse.half_height,
            cx + ellipse.half_width,
            cy + ellipse.half_height,
        )
        draw.ellipse(box, outline=color, width=style.line_width)
        if ellipse.is_centre_slice:
            _caption(draw, caption, color, box, rows, columns, style)
    _draw_legend(draw, title, legend, rows, style)
    return np.asarray(canvas, dtype=np.uint8)


def _legend_entries(layers: Layers) -> list[tuple[RGB, str]]:
    names = [segment.label for segment in layers.segments]
    names += [code.meaning for code in layers.finding_types]
    return list(zip(layers.rgb, names, strict=True))


def _strip_height(legend: list[tuple[RGB, str]], style: _Style) -> int:
    return (len(legend) + 2) * style.line_height + 2 * style.padding


def _legend_width(title: str, legend: list[tuple[RGB, str]], style: _Style) -> int:
    swatch = style.line_height
    headers = max(style.font.getlength(text) for text in (title, NOT_FOR_DIAGNOSIS))
    names = max(style.font.getlength(name) for _, name in legend) + swatch + style.padding
    return int(max(headers, names)) + 2 * style.padding + 1


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    title: str,
    legend: list[tuple[RGB, str]],
    top: int,
    style: _Style,
) -> None:
    """Two lines of header (what this is, the warning), then one line per colour."""
    y = top + style.padding
    white = (255, 255, 255)
    draw.text((style.padding, y), title, fill=white, font=style.font)
    y += style.line_height
    draw.text((style.padding, y), NOT_FOR_DIAGNOSIS, fill=white, font=style.font)
    swatch = style.line_height - style.padding
    for color, name in legend:
        y += style.line_height
        draw.rectangle(
            (style.padding, y, style.padding + swatch, y + swatch), fill=color, outline=color
        )
        draw.text((2 * style.padding + swatch, y), name, fill=color, font=style.font)


def _caption(
    draw: ImageDraw.ImageDraw,
    text: str,
    color: RGB,
    box: tuple[float, float, float, float],
    rows: int,
    columns: int,
    style: _Style,
) -> None:
    """The label above the ellipse (below it when there is no room), kept in the image."""
    width = style.font.getlength(text)
    left = min(max(0.0, (box[0] + box[2]) / 2 - width / 2), max(0.0, columns - width))
    top = box[1] - style.line_height
    if top < 0:
        top = min(box[3] + style.padding, rows - style.line_height)
    draw.text((left, top), text, fill=color, font=style.font)


def _capture(
    volume: Volume,
    k: int,
    pixels: npt.NDArray[np.uint8],
    findings: Findings,
    series_uid: str,
    series_number: int,
    software_version: str,
    sop_uid: str,
) -> Dataset:
    source = volume.datasets[k]
    algorithm = findings.algorithm
    orientation = hd.spatial.get_closest_patient_orientation(volume.affine)
    _, row_spacing, col_spacing = volume.spacing
    # "AI <what> (<algorithm>)" as every output's; the warning kept whole within 64 characters
    name = algorithm.name[: 64 - len(SERIES_DESCRIPTION.format(name=""))]
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=k + 1,
        manufacturer=algorithm.manufacturer,
        pixel_spacing=(row_spacing, col_spacing),  # type: ignore[arg-type]  # floats are fine
        # PatientOrientation: the direction of the rows (increasing column), then that of
        # the columns (increasing row)
        patient_orientation=(orientation[2].value, orientation[1].value),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[equipment(algorithm)],
        manufacturer_model_name=algorithm.name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=SERIES_DESCRIPTION.format(name=name),
    )
    capture.BurnedInAnnotation = "YES"
    capture.ImageComments = (
        f"Derived image: findings of {algorithm.name} {algorithm.version} burned into a copy "
        f"of source image {source.SOPInstanceUID} (legend below the image). "
        f"{NOT_FOR_DIAGNOSIS}: read the original series."
    )
    capture.DerivationDescription = (
        "Source slice in its display window, AI findings burned in (pacs-annotator)"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = DicomSequence(
        [hd.sr.CodedConcept.from_code(SOURCE_PURPOSE)]
    )
    capture.SourceImageSequence = DicomSequence([reference])
    copy_required_source_attributes(source, capture)
    copy_body_part(source, capture)
    return capture
