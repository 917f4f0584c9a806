"""Reading GSPS and Secondary Capture objects back, for the tests of both writers."""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from skimage import draw

from pipelines.volume import Volume
from tests.support.dicom_validate import PIXELMED_JAR, java_path, pixelmed_messages

UNRECOGNIZED = "IOD (SOP Class) unrecognized"


@dataclass(frozen=True)
class Drawn:
    """One graphic or text object of a GSPS, with its layer and the slice it is drawn on."""

    layer: str
    slice_index: int
    item: Dataset

    @property
    def points(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.item.GraphicData, dtype=np.float64).reshape(-1, 2)


def drawn_objects(gsps: Dataset, volume: Volume) -> tuple[list[Drawn], list[Drawn]]:
    """(graphic objects, text objects) of ``gsps``, each on the source plane (index in
    ``volume.planes``) of the image, and frame, it references."""
    index = {
        (str(plane.dataset.SOPInstanceUID), plane.frame): k for k, plane in enumerate(volume.planes)
    }
    graphics, texts = [], []
    for annotation in gsps.GraphicAnnotationSequence:
        (reference,) = annotation.ReferencedImageSequence
        frame = reference.get("ReferencedFrameNumber")
        key = (str(reference.ReferencedSOPInstanceUID), None if frame is None else int(frame))
        k = index[key]
        for item in annotation.get("GraphicObjectSequence", []):
            graphics.append(Drawn(str(annotation.GraphicLayer), k, item))
        for item in annotation.get("TextObjectSequence", []):
            texts.append(Drawn(str(annotation.GraphicLayer), k, item))
    return graphics, texts


def nearest_slices(volume: Volume, point_mm: tuple[float, float, float]) -> set[int]:
    """The slices whose planes are nearest ``point_mm`` (two when it lies halfway), from
    the slices' own positions."""
    orientation = np.asarray(volume.datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([ds.ImagePositionPatient for ds in volume.datasets], dtype=np.float64)
    distance = np.abs((positions - np.asarray(point_mm)) @ normal)
    return {int(k) for k in np.flatnonzero(distance <= distance.min() + 1e-3)}


def assert_on_boundary(points: np.ndarray, plane: np.ndarray) -> None:
    """Every vertex lies between a pixel centre inside the mask and one outside it."""
    padded = np.pad(plane, 1)  # outside the image is outside the mask
    for column, row in points:
        r, c = row - 0.5 + 1, column - 0.5 + 1  # pixel-index coordinates in ``padded``
        rows = {int(np.floor(r)), int(np.ceil(r))}
        cols = {int(np.floor(c)), int(np.ceil(c))}
        around = {bool(padded[i, j]) for i in rows for j in cols}
        assert around == {True, False}, f"vertex ({column}, {row}) is not on the boundary"


def even_odd_fill(polylines: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Pixels whose centres are inside an odd number of outlines (holes cancel out)."""
    filled = np.zeros(shape, dtype=bool)
    for points in polylines:
        inside = np.zeros(shape, dtype=bool)
        rr, cc = draw.polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape)
        inside[rr, cc] = True
        filled ^= inside
    return filled


def assert_pixelmed_valid(paths: list[Path]) -> None:
    """PixelMed's DicomInstanceValidator finds no error; skipped, saying so, when this
    PixelMed does not know the IOD (Debian's 20220618 build knows SEG and the enhanced
    CT/MR/PET images, not GSPS, Secondary Capture, RT Structure Set or KOS)."""
    known = _pixelmed_iods()
    classes = {
        path: str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID) for path in paths
    }
    unknown_classes = sorted({uid for uid in classes.values() if f"'{uid}'" not in known})
    if unknown_classes:
        pytest.skip(
            f"PixelMed's DicomInstanceValidator ({PIXELMED_JAR}) has no IOD for SOP class(es) "
            f"{', '.join(unknown_classes)}: it would only say '{UNRECOGNIZED}'"
        )
    results = pixelmed_messages(paths, "instance")
    errors = {path.name: messages.errors for path, messages in results.items()}
    assert errors == {path.name: () for path in paths}


@functools.cache
def _pixelmed_iods() -> str:
    """The IOD rules of PixelMed's DicomInstanceValidator, which name the SOP classes
    they apply to ("SOPClassUID/value = '...'")."""
    java_path()  # skips when PixelMed is not installed
    with zipfile.ZipFile(PIXELMED_JAR) as jar:
        return jar.read("com/pixelmed/validate/DicomIODDescriptionsCompiled.xsl").decode(
            "utf-8", "replace"
        )
