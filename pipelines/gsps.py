"""Findings -> Grayscale Softcopy Presentation State (GSPS), for viewers without SEG or SR.

Most diagnostic PACS viewers apply a GSPS to the images it references: they draw its
graphics over the original pixels, in its display window. One GSPS per source volume and
pipeline (like the SEG) references every source image of the volume (and, for a
multi-frame image, its frames: Referenced Frame Number) and holds:
- per segment, a graphic layer in the SEG's colour (Graphic Layer Recommended Display
  CIELab Value) with the segment's outline on every source plane where it appears (the
  SEG's frame mask of that image; every piece and hole a closed POLYLINE) and its name
  beside the outline;
- per finding type of the detections, a layer with, on every source plane a detection's
  box crosses, a CIRCLE (an ELLIPSE when the box is not as wide as high) and, on the plane
  nearest its centre, a short label: finding and size;
- the source series' window (Softcopy VOI LUT), or one over its values when it has none.
Graphics are in PIXEL units (image coordinates, PS3.3 C.10.5.1.2); see ``pipelines.marks``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from pipelines.findings import Detection, Findings, Segment
from pipelines.marks import (
    Ellipse,
    copy_body_part,
    detection_caption,
    detection_ellipses,
    fallback_window,
    finding_key,
    overlay_layers,
    plane_window,
    segment_outlines,
)
from pipelines.seg import copy_required_source_attributes
from pipelines.sr_root import equipment
from pipelines.uids import derive_uid
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: Height of a text label's box, as a fraction of the image's rows (at least 8 pixels).
LABEL_HEIGHT_FRACTION = 1 / 32
#: Graphic Data (0070,0022), FL: the points of a graphic object.
_GRAPHIC_DATA = Tag(0x00700022)
#: Width of one character of a label, as a fraction of the label's height.
CHARACTER_WIDTH_RATIO = 0.6


@dataclass
class _Slice:
    """What one layer draws on one source plane."""

    graphics: list[hd.pr.GraphicObject] = field(default_factory=list)
    texts: list[hd.pr.TextObject] = field(default_factory=list)


def build_gsps(
    volume: Volume,
    findings: Findings,
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    software_version: str,
) -> Dataset:
    """A GSPS drawing ``findings`` over every image of ``volume``'s series.

    Raises ``pipelines.marks.NothingToDrawError`` when there is nothing to draw, and
    ``ValueError`` when a mask does not fit the volume.
    """
    layers = overlay_layers(volume, findings)
    graphic_layers: list[hd.pr.GraphicLayer] = []
    annotations: list[hd.pr.GraphicAnnotation] = []
    for number, segment in enumerate(layers.segments, start=1):
        layer = hd.pr.GraphicLayer(
            layer_name=f"SEGMENT {number}",
            order=number,
            description=segment.label[:64],
            display_color=layers.lab(number - 1),
        )
        tracking = derive_uid("gsps-tracking", sop_uid, "segment", str(number))
        graphic_layers.append(layer)
        annotations += _annotations(volume, layer, _outlined(volume, segment, tracking))
    for offset, finding_type in enumerate(layers.finding_types, start=1):
        layer = hd.pr.GraphicLayer(
            layer_name=f"DETECTION {offset}",
            order=len(layers.segments) + offset,
            description=finding_type.meaning[:64],
            display_color=layers.lab(len(layers.segments) + offset - 1),
        )
        drawn: dict[int, _Slice] = {}
        for index, detection in enumerate(findings.detections):
            if finding_key(detection.finding_type) == finding_key(finding_type):
                tracking = derive_uid("gsps-tracking", sop_uid, "detection", str(index))
                _circle(volume, detection, tracking, drawn)
        graphic_layers.append(layer)
        annotations += _annotations(volume, layer, drawn)

    algorithm = findings.algorithm
    source = volume.datasets[0]
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=_referenced_images(volume),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=software_version,
        device_serial_number="0",
        content_label="AI_FINDINGS",
        content_description=f"{algorithm.name} {algorithm.version}"[:64],
        graphic_annotations=annotations,
        graphic_layers=graphic_layers,
        content_creator_name=f"{algorithm.name}^",
        voi_lut_transformations=_voi(volume),
        contributing_equipment=[equipment(algorithm)],
        series_description=f"AI annotations ({algorithm.name})"[:64],
    )
    _reference_frames(gsps, volume)
    copy_required_source_attributes(source, gsps)
    copy_body_part(source, gsps)
    logger.info(
        "built GSPS %s for series %s: %d segment(s), %d detection(s), %d annotated slice item(s)",
        sop_uid,
        volume.series_uid,
        len(layers.segments),
        len(findings.detections),
        len(annotations),
    )
    return gsps


def _referenced_images(volume: Volume) -> list[Dataset]:
    """The volume's source instances, once each (a multi-frame one holds all its planes)."""
    unique: dict[str, Dataset] = {}
    for plane in volume.planes:
        unique.setdefault(str(plane.dataset.SOPInstanceUID), plane.dataset)
    return list(unique.values())


def _reference_frames(gsps: Dataset, volume: Volume) -> None:
    """Referenced Frame Number on each multi-frame instance of the Referenced Series
    Sequence: the frames this volume is made of (a multi-frame instance may hold several
    stacks, each its own volume). highdicom references whole instances only."""
    frames: dict[str, list[int]] = {}
    for plane in volume.planes:
        if plane.frame is not None:
            frames.setdefault(str(plane.dataset.SOPInstanceUID), []).append(plane.frame)
    if not frames:
        return
    for series in gsps.ReferencedSeriesSequence:
        for item in series.ReferencedImageSequence:
            numbers = frames.get(str(item.ReferencedSOPInstanceUID))
            if numbers:
                item.ReferencedFrameNumber = sorted(numbers)


def _outlined(volume: Volume, segment: Segment, tracking_uid: str) -> dict[int, _Slice]:
    """Per source plane, the segment's outlines and its name above the topmost one."""
    drawn: dict[int, _Slice] = {}
    for k, outlines in segment_outlines(volume.plane_masks(segment.mask)):
        on_slice = drawn.setdefault(k, _Slice())
        for outline in outlines:
            on_slice.graphics.append(
                polyline(_inside(outline, volume), segment.label[:64], tracking_uid)
            )
        top = min(outlines, key=lambda points: float(points[:, 1].min()))
        anchor = top[int(np.argmin(top[:, 1]))]
        on_slice.texts.append(_label(segment.label, volume, anchor, float(top[:, 1].max())))
    return drawn


def _circle(
    volume: Volume, detection: Detection, tracking_uid: str, drawn: dict[int, _Slice]
) -> None:
    """The detection's ellipse on each plane it crosses, its caption on the nearest one."""
    for ellipse in detection_ellipses(volume, detection):
        on_slice = drawn.setdefault(ellipse.slice_index, _Slice())
        on_slice.graphics.append(
            _ellipse_graphic(ellipse, volume, detection.label[:64], tracking_uid)
        )
        if ellipse.is_centre_slice:
            cx, cy = ellipse.centre
            anchor = np.array([cx, cy - ellipse.half_height])
            caption = detection_caption(detection, volume)
            on_slice.texts.append(_label(caption, volume, anchor, cy + ellipse.half_height))


def _annotations(
    volume: Volume, layer: hd.pr.GraphicLayer, drawn: dict[int, _Slice]
) -> list[hd.pr.GraphicAnnotation]:
    return [
        _SliceAnnotation(
            volume.planes[k].dataset,
            layer,
            on_slice.graphics,
            on_slice.texts,
            frame=volume.planes[k].frame,
        )
        for k, on_slice in sorted(drawn.items())
    ]


class _SliceAnnotation(hd.pr.GraphicAnnotation):  # type: ignore[misc]
    """highdicom's GraphicAnnotation for one source image (or one frame of a multi-frame
    image), without its IOD lookups.

    highdicom's constructor looks each referenced image's SOP class up in the standard's
    module tables (is it tiled? multi-frame?), 20-25 ms per item: 20 s for the three
    segments of a 300-slice CT. For one source plane of a volume (always what this writer
    annotates, its points already clipped to the image) the item is the same few
    attributes; tests/unit/pipelines/test_gsps.py checks it equals highdicom's.
    """

    def __init__(
        self,
        image: Dataset,
        layer: hd.pr.GraphicLayer,
        graphics: list[hd.pr.GraphicObject],
        texts: list[hd.pr.TextObject],
        frame: int | None = None,
    ) -> None:
        Dataset.__init__(self)
        if not (graphics or texts):
            raise ValueError("an annotation needs a graphic or a text object")
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        if frame is not None:
            reference.ReferencedFrameNumber = frame
        self.GraphicLayer = layer.GraphicLayer
        self.ReferencedImageSequence = DicomSequence([reference])  # type: ignore[assignment]
        if graphics:
            self.GraphicObjectSequence = graphics
        if texts:
            self.TextObjectSequence = texts


def polyline(
    points: npt.NDArray[np.float64], tracking_id: str, tracking_uid: str
) -> hd.pr.GraphicObject:
    """highdicom's POLYLINE graphic object (PIXEL units), its Graphic Data packed at once."""
    return _Polyline(points, tracking_id, tracking_uid)


class _Polyline(hd.pr.GraphicObject):  # type: ignore[misc]
    """highdicom's POLYLINE GraphicObject in PIXEL units, its Graphic Data encoded at once.

    highdicom sets Graphic Data as a list of Python floats, which pydicom checks and packs
    one value at a time, and converts the type and units through enumerations for every
    object: thousands of outlines per GSPS. This item holds the same attributes, Graphic
    Data as little-endian FL bytes made in one go, the bytes pydicom would write
    (tests/unit/pipelines/test_gsps.py checks the encoded item equals highdicom's). The
    points are checked as highdicom checks them: two or more, finite, not negative.
    """

    def __init__(
        self, points: npt.NDArray[np.float64], tracking_id: str, tracking_uid: str
    ) -> None:
        Dataset.__init__(self)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 2:
            raise ValueError(
                f"a POLYLINE needs two or more (column, row) points, not {points.shape}"
            )
        if not np.isfinite(points).all() or float(points.min()) < 0.0:
            raise ValueError("POLYLINE points in PIXEL units must be finite and not negative")
        self.GraphicDimensions = 2
        self.GraphicType = hd.pr.GraphicTypeValues.POLYLINE.value
        self.GraphicAnnotationUnits = hd.pr.AnnotationUnitsValues.PIXEL.value
        self.NumberOfGraphicPoints = len(points)
        data = np.ascontiguousarray(points, dtype="<f4").tobytes()
        self[_GRAPHIC_DATA] = RawDataElement(
            _GRAPHIC_DATA, "FL", len(data), data, 0, is_implicit_VR=False, is_little_endian=True
        )
        self.GraphicFilled = "N"
        self.TrackingID = tracking_id
        self.TrackingUID = tracking_uid


def _ellipse_graphic(
    ellipse: Ellipse, volume: Volume, tracking_id: str, tracking_uid: str
) -> hd.pr.GraphicObject:
    """CIRCLE: centre, then a point on the circle; ELLIPSE: the ends of the major axis,
    then those of the minor axis (PS3.3 C.10.5.1.2)."""
    centre = np.asarray(ellipse.centre)
    major, minor = np.asarray(ellipse.major), np.asarray(ellipse.minor)
    if ellipse.is_circle:
        points = np.array([centre, centre + major])
        kind = hd.pr.GraphicTypeValues.CIRCLE
    else:
        points = np.array([centre - major, centre + major, centre - minor, centre + minor])
        kind = hd.pr.GraphicTypeValues.ELLIPSE
    return hd.pr.GraphicObject(
        graphic_type=kind,
        graphic_data=_inside(points, volume),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        tracking_id=tracking_id,
        tracking_uid=tracking_uid,
    )


def _label(
    text: str, volume: Volume, anchor: npt.NDArray[np.float64], below: float
) -> hd.pr.TextObject:
    """Text in a box above ``anchor`` (the top of what it names), else below ``below``."""
    rows, columns = _image_size(volume)
    height = max(8.0, rows * LABEL_HEIGHT_FRACTION)
    width = min(float(columns), len(text) * height * CHARACTER_WIDTH_RATIO)
    left = float(np.clip(anchor[0] - width / 2, 0.0, columns - width))
    bottom = float(anchor[1]) - 1.0
    if bottom - height < 0:
        bottom = min(below + 1.0 + height, float(rows))
    top = max(0.0, bottom - height)
    anchor_point = (float(np.clip(anchor[0], 0, columns)), float(np.clip(anchor[1], 0, rows)))
    return hd.pr.TextObject(
        text_value=text[:1024],
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(left, top, left + width, bottom),
        anchor_point=anchor_point,
        anchor_point_visible=False,
    )


def _inside(points: npt.NDArray[np.float64], volume: Volume) -> npt.NDArray[np.float64]:
    """Points clipped to the image (0..Columns, 0..Rows): PIXEL units allow no more."""
    rows, columns = _image_size(volume)
    return np.column_stack(
        [np.clip(points[:, 0], 0.0, columns), np.clip(points[:, 1], 0.0, rows)]
    ).astype(np.float64)


def _image_size(volume: Volume) -> tuple[int, int]:
    """(Rows, Columns) of the source images (every plane of a volume has the same), which
    a resampled grid's slices may exceed."""
    return volume.planes[0].rows, volume.planes[0].cols


def _voi(volume: Volume) -> list[hd.pr.SoftcopyVOILUTTransformation] | None:
    """None to let highdicom copy the source's windows; one over the values when it has none."""
    if any(
        plane_window(plane) is not None or "VOILUTSequence" in plane.dataset
        for plane in volume.planes
    ):
        return None
    window = fallback_window(volume)
    return [
        hd.pr.SoftcopyVOILUTTransformation(
            window_center=window.center,
            window_width=window.width,
            window_explanation="range of the series' values",
        )
    ]
