"""What a TID 1500 report holds besides its measurement groups.

The root of each report ``pipelines.sr`` writes: one device observer (this service),
"Procedure reported", the Image Library (TID 1600), the "Qualitative Evaluations" container
(classifications and absences), and a Contributing Equipment item per algorithm.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.findings import Algorithm, Findings
from pipelines.seg import PROCESSING_PURPOSE
from pipelines.uids import derive_uid
from pipelines.volume import Volume

SeriesResult = tuple[Volume, Findings, Dataset | None]

#: The device observer of every report: this service (each group names its algorithm).
SERVICE_NAME = "pacs-annotator"
#: Stated when an algorithm ran on a series and reported nothing.
NO_FINDING = Code("373572006", "SCT", "Clinical finding absent")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Concept name of a classification's qualitative evaluation (the value is the class).
CLASSIFICATION = Code("278201002", "SCT", "Classification")
#: Scores and probabilities are stated to two decimals (0.87), finer means nothing.
SCORE_DECIMALS = 2
#: "Procedure reported" per source modality (LOINC radiology playbook codes).
PROCEDURES: dict[str, Code] = {
    "CT": Code("25045-6", "LN", "CT unspecified body region"),
    "MR": Code("25056-3", "LN", "MR unspecified body region"),
}
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging")
#: An image library entry's concept (as highdicom and dcmqi write it).
SOURCE = Code("260753009", "SCT", "Source")


def image_library(sources: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group per series, sharing modality and frame of reference.

    The per-image descriptors (TID 1602) are optional; highdicom's ``ImageLibrary`` writes
    them for every image at about 20 ms each (0.9 s for the 41-slice test CT), so the image
    items here carry only their references, as viewers read them.
    """
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    by_series: dict[str, list[Dataset]] = {}
    for ds in sources:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    groups = []
    for images in by_series.values():
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        first = images[0]
        context = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
        descriptors: list[hd.sr.ContentItem] = []
        modality = _acquisition_modalities().get(str(first.get("Modality", "")))
        if modality is not None:  # the descriptors are optional; an odd modality goes without
            descriptors.append(
                hd.sr.CodeContentItem(
                    name=codes.DCM.Modality, value=modality, relationship_type=context
                )
            )
        if "FrameOfReferenceUID" in first:
            descriptors.append(
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.FrameOfReferenceUID,
                    value=str(first.FrameOfReferenceUID),
                    relationship_type=context,
                )
            )
        entries = [
            hd.sr.ImageContentItem(
                name=SOURCE,
                referenced_sop_class_uid=str(ds.SOPClassUID),
                referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for ds in images
        ]
        group.ContentSequence = DicomSequence([*descriptors, *entries])
        groups.append(group)
    library.ContentSequence = DicomSequence(groups)
    return library


@functools.cache
def _acquisition_modalities() -> dict[str, Code]:
    """CID 29 "Acquisition Modality" by modality (CT -> "Computed Tomography")."""
    return {code.value: code for code in (getattr(codes.cid29, n) for n in codes.cid29.dir())}


def qualitative_evaluations(results: Sequence[SeriesResult]) -> hd.sr.ContainerContentItem | None:
    """TID 1500's "Qualitative Evaluations": classifications, and what found nothing.

    These state something about a whole series, with no place on an image. They stay out
    of "Imaging Measurements", whose every group viewers expect to locate on an image (OHIF
    fails to load a report with a group it cannot place). Each class or absence is a CODE,
    followed by a TEXT naming the algorithm, the series and the probability.
    """
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = []
    for volume, findings, _ in results:
        algorithm = findings.algorithm
        number = volume.datasets[0].get("SeriesNumber")
        series = f"series {number}" if number not in (None, "") else volume.series_uid
        where = f"{algorithm.name} {algorithm.version}, {series}"
        for classification in findings.classifications:
            items.append(_code_item(CLASSIFICATION, classification.code))
            probability = round(classification.probability, SCORE_DECIMALS)
            items.append(
                text_item(f"{classification.code.meaning}: probability {probability} ({where})")
            )
        if findings.is_empty:
            items.append(_code_item(codes.DCM.Finding, NO_FINDING))
            items.append(text_item(f"No findings ({where})"))
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = DicomSequence(items)
    return container


def _code_item(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def text_item(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def procedures(results: Sequence[SeriesResult]) -> list[Code]:
    """The imaging procedure(s) the report is about, by modality.

    "Procedure reported" takes its codes from CID 100, which has no body-region codes for
    CT or MR ("CT Chest" is not in it; PixelMed reports it as an error).
    """
    found: dict[Code, None] = {}
    for volume, _, _ in results:
        found[PROCEDURES.get(volume.modality, IMAGING_PROCEDURE)] = None
    return list(found)


def distinct_algorithms(results: Sequence[SeriesResult]) -> list[Algorithm]:
    seen: dict[tuple[str, str, str], Algorithm] = {}
    for _, findings, _ in results:
        algorithm = findings.algorithm
        seen.setdefault((algorithm.name, algorithm.version, algorithm.manufacturer), algorithm)
    return list(seen.values())


def device_observer(software_version: str) -> hd.sr.ObserverContext:
    """This service as the one device observer; the algorithms are named per group."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derive_uid("device-observer", SERVICE_NAME),
            name=SERVICE_NAME,
            manufacturer_name=SERVICE_NAME,
            model_name=f"{SERVICE_NAME} {software_version}",
        ),
    )


def equipment(algorithm: Algorithm) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PROCESSING_PURPOSE,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=f"Automatic findings by {algorithm.name} {algorithm.version}",
    )
