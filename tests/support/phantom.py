"""A synthetic CT series with analytically known anatomy, for unit and integration tests.

The objects are defined in patient coordinates (LPS mm), and every voxel centre is mapped
through the series geometry, so any orientation, spacing or slice order shows the same
anatomy: an elliptic-cylinder body (40 HU) lying on a separate table plate, two
ellipsoid lungs (-850 HU), a bone rod (700 HU) where the spine would be and a pocket of
bowel gas (-1000 HU) below the lungs. Optional ``nodules`` (solid spheres) and ``vessels``
(solid tubes) of known place and size can be put inside the lungs for detection tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian

from pipelines.uids import derive_uid

Orientation = (
    Literal["axial", "coronal", "sagittal"] | tuple[float, float, float, float, float, float]
)

ORIENTATIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}

AIR_HU, TISSUE_HU, LUNG_HU, BONE_HU, GAS_HU, TABLE_HU = -1000, 40, -850, 700, -1000, 200
BODY_SEMI_AXES = (150.0, 105.0)  # x (left-right), y (anterior-posterior), mm
LUNG_SEMI_AXES = (45.0, 55.0, 70.0)  # x, y, z mm
LUNG_CENTRES = ((-65.0, 5.0, 20.0), (65.0, 5.0, 20.0))
BONE_CENTRE, BONE_RADIUS = (0.0, 75.0), 12.0  # a rod along z
GAS_CENTRE, GAS_RADIUS = (0.0, -45.0, -75.0), 15.0
TABLE_Y = (115.0, 125.0)  # a plate 10 mm below (posterior to) the body, 10 mm air gap
NODULE_HU = VESSEL_HU = 40

Point = tuple[float, float, float]


@dataclass(frozen=True)
class Nodule:
    """A solid sphere: centre in patient LPS mm, diameter in mm."""

    centre: Point
    diameter: float


@dataclass(frozen=True)
class Vessel:
    """A solid tube (capsule) from ``start`` to ``end`` (LPS mm) of ``diameter`` mm."""

    start: Point
    end: Point
    diameter: float


@dataclass(frozen=True)
class LungGeometry:
    """Two ellipsoid lungs: their centres and common semi-axes (x, y, z), LPS mm."""

    centres: tuple[Point, Point]
    semi_axes: Point

    def contains(self, point: Sequence[float], margin: float = 0.0) -> bool:
        """Whether ``point`` is inside a lung, at least ``margin`` mm from its edge (approx.)."""
        a, b, c = (s - margin for s in self.semi_axes)
        return any(
            ((point[0] - cx) / a) ** 2 + ((point[1] - cy) / b) ** 2 + ((point[2] - cz) / c) ** 2
            <= 1.0
            for cx, cy, cz in self.centres
        )


DEFAULT_LUNGS = LungGeometry(LUNG_CENTRES, LUNG_SEMI_AXES)  # type: ignore[arg-type]
#: Adult-sized lungs (12 x 14 x 22 cm) in the same body: room for a 10 cm mass.
LARGE_LUNGS = LungGeometry(((-75.0, 0.0, 0.0), (75.0, 0.0, 0.0)), (60.0, 70.0, 110.0))


@dataclass(frozen=True)
class CtPhantom:
    """The datasets (in the order requested) and the true lung volume (both lungs, mL)."""

    datasets: list[Dataset]
    lung_volume_ml: float
    hu: npt.NDArray[np.float32]


def true_lung_volume_ml() -> float:
    a, b, c = LUNG_SEMI_AXES
    return 2 * (4.0 / 3.0) * math.pi * a * b * c / 1000.0


def make_ct_phantom(
    *,
    slices: int = 48,
    size: int = 128,
    pixel_spacing: float = 2.75,
    slice_spacing: float = 5.0,
    orientation: Orientation = "axial",
    shuffle: bool = False,
    noise_hu: float = 10.0,
    seed: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    nodules: Sequence[Nodule] = (),
    vessels: Sequence[Vessel] = (),
    nodule_hu: float = NODULE_HU,
    lungs: LungGeometry | None = None,
) -> CtPhantom:
    """Build the phantom; the grid is centred on the patient origin.

    ``lungs`` replaces the default lung ellipsoids (e.g. the bigger ones of
    ``LARGE_LUNGS``, with room for a 10 cm mass). ``nodule_hu`` paints the nodules
    denser (e.g. bone-like spheres for geometry tests).
    ``shuffle`` returns the slices in random order with InstanceNumber following that
    random order, so a loader that sorts by file order or InstanceNumber gets it wrong.
    """
    iop = ORIENTATIONS[orientation] if isinstance(orientation, str) else orientation
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    half = (size - 1) / 2.0
    first = (
        -half * pixel_spacing * (row_dir + col_dir) - (slices - 1) / 2.0 * slice_spacing * normal
    )

    k, r, c = np.meshgrid(np.arange(slices), np.arange(size), np.arange(size), indexing="ij")
    points = (
        first
        + k[..., None] * slice_spacing * normal
        + r[..., None] * pixel_spacing * col_dir
        + c[..., None] * pixel_spacing * row_dir
    )
    hu = _anatomy(points[..., 0], points[..., 1], points[..., 2], lungs or DEFAULT_LUNGS)
    _add_solids(hu, points, nodules, vessels, nodule_hu)
    del points
    rng = np.random.default_rng(seed)
    noisy = hu + rng.normal(0.0, noise_hu, hu.shape) * (hu > AIR_HU)
    stored = np.clip(np.rint(noisy + 1024.0), 0, 4095).astype(np.uint16)

    study_uid = study_uid or derive_uid("phantom-study", str(seed))
    extra = [str(n) for n in nodules] + [str(v) for v in vessels]
    series_uid = series_uid or derive_uid(
        "phantom-series", str(seed), str(iop), str(slices), *extra
    )
    order = list(range(slices))
    if shuffle:
        rng.shuffle(order)
    datasets = []
    for instance_number, index in enumerate(order, start=1):
        position = first + index * slice_spacing * normal
        datasets.append(
            _slice_dataset(
                stored[index],
                position,
                iop,
                pixel_spacing,
                slice_spacing,
                study_uid,
                series_uid,
                instance_number,
                sop_uid=derive_uid(series_uid, str(index)),
            )
        )
    return CtPhantom(datasets=datasets, lung_volume_ml=true_lung_volume_ml(), hu=hu)


def _anatomy(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    z: npt.NDArray[np.float64],
    lungs: LungGeometry,
) -> npt.NDArray[np.float32]:
    hu = np.full(x.shape, AIR_HU, dtype=np.float32)
    body = (x / BODY_SEMI_AXES[0]) ** 2 + (y / BODY_SEMI_AXES[1]) ** 2 <= 1.0
    hu[body] = TISSUE_HU
    hu[(y >= TABLE_Y[0]) & (y <= TABLE_Y[1]) & (np.abs(x) <= 180.0)] = TABLE_HU
    a, b, c = lungs.semi_axes
    for cx, cy, cz in lungs.centres:
        lung = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0
        hu[lung] = LUNG_HU
    bone = (x - BONE_CENTRE[0]) ** 2 + (y - BONE_CENTRE[1]) ** 2 <= BONE_RADIUS**2
    hu[bone] = BONE_HU
    gx, gy, gz = GAS_CENTRE
    gas = (x - gx) ** 2 + (y - gy) ** 2 + (z - gz) ** 2 <= GAS_RADIUS**2
    hu[gas] = GAS_HU
    return hu


def _add_solids(
    hu: npt.NDArray[np.float32],
    points: npt.NDArray[np.float64],
    nodules: Sequence[Nodule],
    vessels: Sequence[Vessel],
    nodule_hu: float = NODULE_HU,
) -> None:
    """Paint spheres and tubes, each only over its bounding box (the grid can be large)."""
    for nodule in nodules:
        centre = np.array(nodule.centre)
        radius = nodule.diameter / 2.0
        box = _box(points, centre - radius, centre + radius)
        inside = np.linalg.norm(points[box] - centre, axis=-1) <= radius
        hu[box][inside] = nodule_hu
    for vessel in vessels:
        start, end = np.array(vessel.start), np.array(vessel.end)
        radius = vessel.diameter / 2.0
        box = _box(points, np.minimum(start, end) - radius, np.maximum(start, end) + radius)
        axis = end - start
        local = points[box] - start
        t = np.clip(local @ axis / float(axis @ axis), 0.0, 1.0)
        distance = np.linalg.norm(local - t[..., None] * axis, axis=-1)
        hu[box][distance <= radius] = VESSEL_HU


def _box(
    points: npt.NDArray[np.float64],
    low: npt.NDArray[np.float64],
    high: npt.NDArray[np.float64],
) -> tuple[slice, slice, slice]:
    """Index box of the grid points inside [low, high] (axis-aligned grids only)."""
    inside = np.all((points >= low) & (points <= high), axis=-1)
    found = np.argwhere(inside)
    if found.size == 0:
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    lo, hi = found.min(axis=0), found.max(axis=0) + 1
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _slice_dataset(
    pixels: npt.NDArray[np.uint16],
    position: Sequence[float],
    iop: Sequence[float],
    pixel_spacing: float,
    slice_spacing: float,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    sop_uid: str,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "PHANTOM1"
    ds.Modality = "CT"
    ds.Manufacturer = "pacs-annotator test phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic CT phantom"
    ds.SeriesDescription = "Phantom chest-abdomen"
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PHANTOM-001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 3
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = derive_uid("phantom-frame", study_uid)
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.SliceThickness = slice_spacing
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels.tobytes()
    return ds


#: Solid spheres inside the phantom's lungs (away from the pleura and from the vessels).
LUNG_NODULES: tuple[Nodule, ...] = (
    Nodule((-65.0, 5.0, 20.0), 20.0),
    Nodule((-70.0, -25.0, -20.0), 10.0),
    Nodule((-55.0, 30.0, 45.0), 6.0),
    Nodule((60.0, -20.0, 40.0), 8.0),
    Nodule((70.0, 20.0, -5.0), 15.0),
    Nodule((50.0, 10.0, 10.0), 4.0),
)
#: A cranio-caudal vessel, an oblique one and a short (22 mm) oblique branch: not nodules.
LUNG_VESSELS: tuple[Vessel, ...] = (
    Vessel((-85.0, -10.0, -30.0), (-85.0, -10.0, 50.0), 4.0),
    Vessel((45.0, -35.0, 0.0), (85.0, 35.0, 20.0), 3.0),
    Vessel((-45.0, -10.0, -10.0), (-38.0, 8.0, 0.0), 3.0),
)


def make_nodule_phantom(*, seed: int = 11, study_uid: str | None = None) -> CtPhantom:
    """A thin-slice chest phantom (1.5 mm pixels, 2 mm slices) with nodules and vessels."""
    return make_ct_phantom(
        slices=60,
        size=224,
        pixel_spacing=1.5,
        slice_spacing=2.0,
        seed=seed,
        study_uid=study_uid,
        nodules=LUNG_NODULES,
        vessels=LUNG_VESSELS,
    )


def image_point_mm(image: Dataset, column: float, row: float) -> npt.NDArray[np.float64]:
    """Patient position (LPS mm) of DICOM image coordinates (column, row) on ``image``.

    Image coordinates put the top-left corner of the image at (0, 0), so pixel centres are
    at +0.5 (PS3.3 C.18.6.1.2): what an SR's SCOORD holds.
    """
    orientation = np.array(image.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
    return (
        np.array(image.ImagePositionPatient, dtype=np.float64)
        + orientation[:3] * (column - 0.5) * col_spacing
        + orientation[3:] * (row - 0.5) * row_spacing
    )


LesionShape = Literal["round", "lobulated", "spiculated"]


@dataclass(frozen=True)
class Lesion:
    """A solid lesion of known centre and size, drawn as spheres (lobes) and tubes (spicules).

    ``parts`` and ``spicules`` are what ``make_ct_phantom`` paints (its ``nodules`` and
    ``vessels``); ``diameter`` is the diameter of the main sphere, so a lobulated or
    spiculated lesion is a little larger than that along some directions.
    """

    centre: Point
    diameter: float
    shape: LesionShape
    parts: tuple[Nodule, ...]
    spicules: tuple[Vessel, ...]


def make_lesion(
    centre: Sequence[float], diameter: float, shape: LesionShape, rng: np.random.Generator
) -> Lesion:
    """A round, lobulated (4 bulges of 0.3-0.45 diameter on its surface) or spiculated
    (8 tubes of 1.5 mm, 0.3-0.6 diameter long, radiating from its surface) lesion."""
    centre_a = np.asarray(centre, dtype=np.float64)
    radius = diameter / 2.0
    parts = [Nodule(_point(centre_a), diameter)]
    spicules: list[Vessel] = []
    if shape == "lobulated":
        for _ in range(4):
            direction = _unit(rng)
            lobe = diameter * float(rng.uniform(0.3, 0.45))
            parts.append(Nodule(_point(centre_a + direction * (radius - lobe / 4.0)), lobe))
    elif shape == "spiculated":
        for _ in range(8):
            direction = _unit(rng)
            length = diameter * float(rng.uniform(0.3, 0.6))
            start = centre_a + direction * radius * 0.8
            spicules.append(Vessel(_point(start), _point(start + direction * length), 1.5))
    return Lesion(_point(centre_a), diameter, shape, tuple(parts), tuple(spicules))


def attached_centre(
    lungs: LungGeometry, side: int, direction: Sequence[float], diameter: float, inside: float
) -> Point:
    """Centre of a lesion touching the lung's edge along ``direction`` from the centre of
    lung ``side`` (0 right, 1 left): ``inside`` of its diameter lies in the lung, the rest
    in the wall beyond the lung's edge (chest wall, mediastinum or diaphragm)."""
    centre = np.array(lungs.centres[side])
    unit = np.asarray(direction, dtype=np.float64)
    unit /= np.linalg.norm(unit)
    semi = np.array(lungs.semi_axes)
    # Distance from the lung centre to its edge along ``unit`` (ellipsoid).
    edge = 1.0 / math.sqrt(float(np.sum((unit / semi) ** 2)))
    return _point(centre + unit * (edge + diameter * (1.0 - inside) - diameter / 2.0))


def _unit(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    vector = rng.normal(size=3)
    result: npt.NDArray[np.float64] = vector / np.linalg.norm(vector)
    return result


def _point(values: npt.NDArray[np.float64]) -> Point:
    return (float(values[0]), float(values[1]), float(values[2]))
