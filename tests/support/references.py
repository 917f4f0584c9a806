"""Reference annotations of a phantom series, written as other tools would write them.

A reference SEG (highdicom, one segment per lung: "Lung-Right", "Lung-Left"), an
RTSTRUCT (pydicom, the body outline as one closed planar contour per slice, ROI "BODY")
and a TID 1500 SR (highdicom Comprehensive 3D SR, one group per lesion: a 3D point, its
long axis, its finding type). The truth is analytic (the phantom's ellipsoids, ellipse and
spheres), so the evaluation of a pipeline on it measures the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipelines.volume import Volume
from tests.support.phantom import BODY_SEMI_AXES, LungGeometry

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def voxel_points(volume: Volume) -> npt.NDArray[np.float64]:
    """Patient mm of every voxel centre, shape (slices, rows, cols, 3)."""
    k, r, c = np.meshgrid(*(np.arange(n) for n in volume.voxels.shape), indexing="ij")
    index = np.stack([k, r, c], axis=-1).astype(np.float64)
    points: npt.NDArray[np.float64] = index @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return points


def lung_masks(volume: Volume, lungs: LungGeometry) -> dict[str, npt.NDArray[np.bool_]]:
    points = voxel_points(volume)
    a, b, c = lungs.semi_axes
    masks = {}
    for name, (cx, cy, cz) in zip(("Lung-Right", "Lung-Left"), lungs.centres, strict=True):
        d = points - np.array([cx, cy, cz])
        masks[name] = (d[..., 0] / a) ** 2 + (d[..., 1] / b) ** 2 + (d[..., 2] / c) ** 2 <= 1.0
    return masks


def write_reference_seg(
    volume: Volume, masks: dict[str, npt.NDArray[np.bool_]], path: Path
) -> None:
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in enumerate(masks, start=1)
    ]
    pixels = np.stack([masks[name] for name in masks], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="reference reader",
        manufacturer_model_name="manual",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=True,
    )
    seg.save_as(path)


def write_reference_rtstruct(volume: Volume, path: Path, name: str = "BODY") -> None:
    """The body ellipse as a closed planar contour on every slice (axial volumes only)."""
    first = volume.datasets[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "FrameOfReferenceUID"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "reference"
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    study = Dataset()
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
    roi.ROIName = name
    ds.StructureSetROISequence = [roi]
    angles = np.linspace(0.0, 2 * math.pi, 120, endpoint=False)
    contours = []
    for image in volume.datasets:
        z = float(image.ImagePositionPatient[2])
        x = BODY_SEMI_AXES[0] * np.cos(angles)
        y = BODY_SEMI_AXES[1] * np.sin(angles)
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(angles)
        contour.ContourData = [
            round(float(v), 3) for p in zip(x, y, [z] * len(x), strict=True) for v in p
        ]
        contours.append(contour)
    item = Dataset()
    item.ReferencedROINumber = 1
    item.ContourSequence = contours
    ds.ROIContourSequence = [item]
    ds.save_as(path, enforce_file_format=True)


def write_reference_sr(
    volume: Volume, lesions: Sequence[tuple[tuple[float, float, float], float, Code]], path: Path
) -> None:
    """One TID 1410 group per lesion: a 3D point at its centre, its long axis, its type."""
    frame_uid = str(volume.datasets[0].FrameOfReferenceUID)
    groups = []
    for number, (centre, diameter, finding) in enumerate(lesions, start=1):
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=f"lesion {number}"
                ),
                referenced_region=hd.sr.ImageRegion3D(
                    graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                    graphic_data=np.array([centre], dtype=np.float64),
                    frame_of_reference_uid=frame_uid,
                ),
                finding_type=finding,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.LongAxis, value=diameter, unit=codes.UCUM.Millimeter
                    )
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name="Reader^Reference"
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(volume.datasets),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=60,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="reference reader",
    )
    sr.save_as(path)
