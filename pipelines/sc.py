"""Findings -> a derived Secondary Capture series: the overlay burned into copies of the images.

For the viewer that shows nothing but images. Each capture is a source plane (a
single-frame image, or one frame of a multi-frame image) with its own pixels (never the
resampled grid's) in its display window, in RGB, with, in the colours of the SEG
(``pipelines.marks.overlay_layers``):
- each segment tinted (``FILL_OPACITY``) and outlined on its boundary pixels, from the
  segment's mask on that plane (``Volume.plane_masks``: the SEG's frame for the image);
- each detection's ellipse on every plane its box crosses, labelled (finding, size) on the
  plane nearest its centre;
and a legend (colour -> structure, and the warning) in a strip below the image, so no
pixel of the image is hidden and pixel (row, column) of the capture is pixel (row, column)
of its source image. Captures are labelled as derived and not for primary diagnosis
(SeriesDescription, ImageComments, BurnedInAnnotation YES) and reference their source
image and frame (Source Image Sequence, Referenced Frame Number). Text is drawn by Pillow
with its built-in font.
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
    plane_window,
)
from pipelines.planes import Plane
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
#: Source images decoded at a time for a resampled volume (bounds the memory it takes).
PIXEL_BATCH = 32


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
    """One RGB capture per source plane with something drawn on it (every plane if
    ``every_slice``).

    ``sop_uid_for(k)`` gives the SOP Instance UID of the capture of source plane ``k``
    (index in ``volume.planes``), so a rerun gives the same UIDs. Raises
    ``pipelines.marks.NothingToDrawError`` when there is nothing to draw, ``ValueError``
    when a mask does not fit the volume and ``VolumeError`` when a resampled volume's
    source pixels cannot be read again.
    """
    layers = overlay_layers(volume, findings)
    ellipses: dict[int, list[tuple[Ellipse, RGB, str]]] = {}
    for detection in findings.detections:
        color = layers.detection_rgb(detection)
        caption = detection_caption(detection, volume)
        for ellipse in detection_ellipses(volume, detection):
            ellipses.setdefault(ellipse.slice_index, []).append((ellipse, color, caption))
    plane_masks = [volume.plane_masks(segment.mask) for segment in layers.segments]
    marked = set(ellipses)
    for masks in plane_masks:
        marked.update(int(k) for k in np.flatnonzero(masks.any(axis=(1, 2))))
    indices = list(range(len(volume.planes))) if every_slice else sorted(marked)
    rows, columns = volume.planes[0].rows, volume.planes[0].cols
    style = _Style.for_image(rows, columns)
    legend = _legend_entries(layers)
    title = f"AI overlay: {findings.algorithm.name}"
    fallback: Window | None = None
    captures = []
    for start in range(0, len(indices), PIXEL_BATCH):
        batch = indices[start : start + PIXEL_BATCH]
        for k, values in zip(batch, volume.plane_pixels(batch), strict=True):
            plane = volume.planes[k]
            window = plane_window(plane)
            if window is None:
                fallback = fallback or fallback_window(volume)
                window = fallback
            grey = window.to_unit(values) * 255.0
            if plane.dataset.get("PhotometricInterpretation") == "MONOCHROME1":
                grey = 255.0 - grey
            insides = [
                (masks[k], color)
                for masks, color in zip(plane_masks, layers.segment_rgb, strict=True)
            ]
            pixels = render_capture(grey, insides, ellipses.get(k, []), title, legend, style)
            captures.append(
                _capture(
                    plane,
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
        "every source image" if every_slice else "source images with findings",
    )
    return captures


def render_capture(
    grey: npt.NDArray[np.float32],
    insides: list[tuple[npt.NDArray[np.bool_], RGB]],
    ellipses: list[tuple[Ellipse, RGB, str]],
    title: str,
    legend: list[tuple[RGB, str]],
    style: _Style,
) -> npt.NDArray[np.uint8]:
    """A source image windowed to grey (0..255), each segment's mask on it (``insides``,
    with its colour) and the ellipses burned in, the legend strip below it."""
    image = np.repeat(grey[..., None], 3, axis=2)
    for inside, color in insides:
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
        if min(abs(ellipse.major[0]), abs(ellipse.major[1])) < 1e-6:  # along the axes
            draw.ellipse(box, outline=color, width=style.line_width)
        else:  # turned: a ring of short lines
            ring = [(float(x) - 0.5, float(y) - 0.5) for x, y in ellipse.outline()]
            draw.line(ring, fill=color, width=style.line_width, joint="curve")
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
    plane: Plane,
    k: int,
    pixels: npt.NDArray[np.uint8],
    findings: Findings,
    series_uid: str,
    series_number: int,
    software_version: str,
    sop_uid: str,
) -> Dataset:
    source = plane.dataset
    algorithm = findings.algorithm
    # the image's own axes: (k, row, col) -> patient, as get_closest_patient_orientation reads
    axes = np.eye(4)
    axes[:3, 1], axes[:3, 2] = plane.col_dir, plane.row_dir
    axes[:3, 0] = plane.normal
    orientation = hd.spatial.get_closest_patient_orientation(axes)
    row_spacing, col_spacing = (float(v) for v in plane.pixel_spacing)
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
        f"of source image {plane.describe()} (legend below the image). "
        f"{NOT_FOR_DIAGNOSIS}: read the original series."
    )
    capture.DerivationDescription = (
        "Source image in its display window, AI findings burned in (pacs-annotator)"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if plane.frame is not None:
        reference.ReferencedFrameNumber = plane.frame
    reference.PurposeOfReferenceCodeSequence = DicomSequence(
        [hd.sr.CodedConcept.from_code(SOURCE_PURPOSE)]
    )
    capture.SourceImageSequence = DicomSequence([reference])
    copy_required_source_attributes(source, capture)
    copy_body_part(source, capture)
    return capture
