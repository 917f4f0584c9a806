"""Findings -> one Key Object Selection document per job: the images a radiologist should see.

PACS viewers that show neither SEG nor SR list a study's key images (often as a "key
images" button or a flag on the thumbnails). The key image of a finding is the one where
it shows best, the same one the SR draws it on (``pipelines.regions``): the slice through
a detection's centre, and the slice where a segment is largest. The document title is
"Of Interest" (DCM 113000, CID 7010), and its description says why each image was flagged
("Nodule 1: 21 mm, score 0.99, series 2 image 23 (ct-lung-nodules)").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from pipelines.findings import Findings, Segment
from pipelines.regions import KeyImageRegion, detection_region, segment_region
from pipelines.seg import copy_required_source_attributes, non_empty_segments
from pipelines.sr import detection_summary
from pipelines.sr_root import SeriesResult, device_observer, distinct_algorithms, equipment
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

#: CID 7010 "Key Object Selection Document Title": the images show the findings.
DOCUMENT_TITLE = codes.DCM.OfInterest
#: Key Object Description is a TEXT item of at most 1024 characters.
MAX_DESCRIPTION = 1024


def has_key_images(results: Sequence[SeriesResult]) -> bool:
    """Whether any result has a detection or a non-empty segment to point at."""
    return any(findings.detections or non_empty_segments(findings) for _, findings, _ in results)


def build_kos(
    results: Sequence[SeriesResult],
    *,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    software_version: str,
) -> Dataset:
    """A KOS of the key image of every detection and segment in ``results``.

    Raises ``ValueError`` when no result has anything to point at.
    """
    # Key images by (instance, frame): the frames of a multi-frame image are images apart.
    images: dict[tuple[str, int | None], tuple[Dataset, int | None]] = {}
    reasons: list[str] = []
    # Anatomy (lungs, bone) is context, not a finding: its images are key only in a study
    # without any other finding (an organ segmentation model).
    anatomy = not any(_lesions(findings) or findings.detections for _, findings, _ in results)
    contributed: list[SeriesResult] = []
    for result in results:
        volume, findings, _ = result
        selected = _key_images(volume, findings, anatomy=anatomy)
        for image, frame, why in selected:
            images.setdefault((str(image.SOPInstanceUID), frame), (image, frame))
            reasons.append(why)
        if selected:
            contributed.append(result)
    if not images:
        raise ValueError("no detection or segment to select a key image for")
    description = "Key images of the AI findings: " + "; ".join(reasons)
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 3] + "..."
    algorithms = distinct_algorithms(contributed)
    names = ", ".join(sorted({algorithm.name for algorithm in algorithms}))
    selected_images = [image for image, _ in images.values()]
    content = hd.ko.KeyObjectSelection(
        document_title=DOCUMENT_TITLE,
        referenced_objects=selected_images,
        observer_device_context=device_observer(software_version),
        description=description,
    )
    # highdicom references whole instances: a frame of a multi-frame image is named by its
    # Referenced Frame Number (TID 2010 IMAGE items, in the order given above).
    items = [item for item in content[0].ContentSequence if item.ValueType == "IMAGE"]
    for item, (_, frame) in zip(items, images.values(), strict=True):
        if frame is not None:
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = frame
    evidence = list({str(image.SOPInstanceUID): image for image in selected_images}.values())
    first = evidence[0]
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=algorithms[0].manufacturer,
        contributing_equipment=[equipment(algorithm) for algorithm in algorithms],
        series_description=f"AI key images ({names})"[:64],
    )
    copy_required_source_attributes(first, document)
    # highdicom names each image item "Source"; TID 2010 forbids a concept name (Purpose of
    # Reference) on the selected images, and PixelMed's DicomSRValidator reports it.
    for item in document.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE") and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence
    logger.info(
        "built KOS %s for study %s: %d key image(s)",
        sop_uid,
        str(first.StudyInstanceUID),
        len(images),
    )
    return document


def _lesions(findings: Findings) -> list[Segment]:
    return [segment for segment in non_empty_segments(findings) if not segment.is_anatomy]


def _key_images(
    volume: Volume, findings: Findings, *, anatomy: bool
) -> list[tuple[Dataset, int | None, str]]:
    """(key image, its frame or None, why) for each detection and non-empty segment
    (anatomy only if asked): the source plane the SR draws the finding on."""
    series = volume.datasets[0].get("SeriesNumber")
    where = f"series {series}" if series not in (None, "") else f"series {volume.series_uid}"
    algorithm = findings.algorithm.name
    selected = []
    for detection in findings.detections:
        region = detection_region(volume, detection)
        text = (
            f"{detection_summary(detection, volume)}, {where} image "
            f"{_image_number(region)} ({algorithm})"
        )
        selected.append((region.image, region.frame, text))
    for segment in non_empty_segments(findings) if anatomy else _lesions(findings):
        region = segment_region(volume, segment.mask)
        text = (
            f"{segment.label}: largest extent, {where} image {_image_number(region)} ({algorithm})"
        )
        selected.append((region.image, region.frame, text))
    return selected


def _image_number(region: KeyImageRegion) -> str:
    """The InstanceNumber viewers show (and the frame of a multi-frame image), else the
    plane's place in the stack (from 1)."""
    number = region.image.get("InstanceNumber")
    if number in (None, ""):
        return f"#{region.slice_index + 1}"
    return str(number) if region.frame is None else f"{number} frame {region.frame}"
