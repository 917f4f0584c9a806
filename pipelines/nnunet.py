"""nnU-Net v2 model folders (and TotalSegmentator's) as pipelines, kept warm on the worker.

Runs nnunetv2's own ``nnUNetPredictor``: its preprocessing (cropping, normalisation,
resampling to the plans' spacing), its sliding window with Gaussian weighting and
optional mirroring, its fold ensemble and its resampling back. The pipeline only hands
it the volume in memory (``predict_single_npy_array``) in the axis order and spacing its
reader would have produced (``pipelines.nnunet_geometry``), and turns the label map it
returns into segments. No temporary files.

Checkpoints are pickles (``torch.load(weights_only=False)`` inside nnunetv2): model
folders are loaded only from paths an admin configured and must be trusted like code.

Loading happens once per pipeline object (per worker process), on first use or when
``load()`` is called; the networks then stay on their device for every later job.
``nnunetv2`` is an optional extra (``pip install pacs-annotator[nnunet]``), imported
only when a model loads.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydicom.sr.coding import Code

from pipelines.bundle_outputs import LabelCode, label_code
from pipelines.colors import parse_color
from pipelines.device_memory import out_of_memory
from pipelines.errors import ModelRunError
from pipelines.findings import Algorithm, Findings, Segment
from pipelines.nnunet_files import (
    DICOM_ORDER,
    ModelFolder,
    NnunetModelError,
    check_model_folder,
    label_names,
    read_json,
    structure_code,
)
from pipelines.nnunet_geometry import NnunetInput, to_nnunet
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

AUTO = "auto"
#: nnU-Net's reader that reorients every image to RAS before training and inference.
_REORIENTING_READER = "NibabelIOWithReorient"
#: Errors torch.load and nnunetv2 raise on a missing, truncated or foreign checkpoint.
_LOAD_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    EOFError,
    AssertionError,
    ImportError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


@dataclass(frozen=True)
class NnunetSpec:
    """A configured nnU-Net pipeline: its model folders and how to run them.

    Several folders (TotalSegmentator's multi-part tasks) each contribute their labels.
    ``orientation`` is ``auto``, ``dicom`` or axis codes such as ``RAS``; ``auto`` is RAS
    for a model whose plans read images with ``NibabelIOWithReorient``, else ``dicom``.
    """

    name: str
    folders: tuple[ModelFolder, ...]
    modalities: frozenset[str] = frozenset({"CT"})
    labels: Mapping[str, LabelCode] = field(default_factory=dict)
    use_mirroring: bool = True
    step_size: float = 0.5
    orientation: str = AUTO
    version: str | None = None


@dataclass
class _Model:
    """One model folder loaded: nnunetv2's predictor, its label names and input orientation."""

    folder: ModelFolder
    predictor: Any
    names: dict[int, str]
    orientation: str


class NnunetPipeline:
    """nnU-Net v2 model folders run on volumes on one device, loaded once and kept warm."""

    def __init__(self, spec: NnunetSpec, *, device: str = "cpu") -> None:
        if not spec.folders:
            raise ValueError(f"pipeline {spec.name}: no nnU-Net model folder")
        self.spec = spec
        self.name = spec.name
        self.modalities = spec.modalities
        self.device = torch.device(device)
        self.algorithm = Algorithm(name=spec.name, version=spec.version or _version(spec))
        self._models: list[_Model] | None = None
        #: How often the models were loaded (a warm worker loads them once).
        self.load_count = 0
        #: Seconds per stage of the last load/run: load, inference, postprocess.
        self.timings: dict[str, float] = {}

    def load(self) -> None:
        """Build each folder's predictor and put its network on the device (once)."""
        if self._models is not None:
            return
        start = time.perf_counter()
        self._models = [self._load_folder(folder) for folder in self.spec.folders]
        self.load_count += 1
        self.timings["load"] = time.perf_counter() - start
        logger.info(
            "loaded nnU-Net pipeline %s (%d model folder(s)) on %s in %.1f s",
            self.name,
            len(self._models),
            self.device,
            self.timings["load"],
        )

    def run(self, volume: Volume) -> Findings:
        try:
            self.load()
        except NnunetModelError as exc:
            # Fails the series with the reason; the other pipelines of the job still run.
            raise ModelRunError(str(exc)) from exc
        assert self._models is not None
        inference = postprocess = 0.0
        segments: list[Segment] = []
        for model in self._models:
            start = time.perf_counter()
            given = to_nnunet(volume, model.orientation)
            labels = self._predict(model, given, volume)
            inference += time.perf_counter() - start
            start = time.perf_counter()
            try:
                grid = given.to_volume_grid(labels)
            except ValueError as exc:
                raise ModelRunError(
                    f"{self.name}: cannot read the model output for series "
                    f"{volume.series_uid}: {exc}"
                ) from exc
            present = {int(value) for value in np.unique(grid)}
            for value, name in sorted(model.names.items()):
                if value not in present:
                    continue  # not written to the SEG anyway: spare a full-size mask
                code = self.code(name)
                segments.append(
                    Segment(
                        name,
                        grid == value,
                        code.category,
                        code.property_type,
                        code.color,
                        property_modifier=self.modifier(name),
                    )
                )
            postprocess += time.perf_counter() - start
        self.timings["inference"] = inference
        self.timings["postprocess"] = postprocess
        return Findings(algorithm=self.algorithm, segments=tuple(segments))

    def code(self, name: str) -> LabelCode:
        """The configured code, else TotalSegmentator's published one, else SNOMED/local."""
        if name in self.spec.labels:
            return self.spec.labels[name]
        published = structure_code(name)
        if published is None:
            return label_code(name, {})
        return LabelCode(
            category=Code(*published.category),
            property_type=Code(*published.property_type),
            color=parse_color(published.color) if published.color else None,
        )

    def modifier(self, name: str) -> Code | None:
        """TotalSegmentator's laterality of a class ("kidney_left": Left), unless configured."""
        if name in self.spec.labels:
            return None
        published = structure_code(name)
        if published is None or published.modifier is None:
            return None
        return Code(*published.modifier)

    def _load_folder(self, folder: ModelFolder) -> _Model:
        check_model_folder(folder)
        dataset_json = read_json(folder.path / "dataset.json")
        plans = read_json(folder.path / "plans.json")
        names = dict(folder.labels) if folder.labels else label_names(dataset_json)
        channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
        if len(channels) != 1:
            raise NnunetModelError(
                f"nnU-Net model {folder.path} takes {len(channels)} input channels; "
                "a series gives one"
            )
        orientation = self.spec.orientation
        if orientation == AUTO:
            reorients = plans.get("image_reader_writer") == _REORIENTING_READER
            orientation = "RAS" if reorients else DICOM_ORDER
        predictor = _predictor(self.spec, self.device)
        try:
            predictor.initialize_from_trained_model_folder(
                str(folder.path), use_folds=folder.folds, checkpoint_name=folder.checkpoint
            )
        except _LOAD_ERRORS as exc:
            raise NnunetModelError(
                f"nnU-Net model {folder.path} cannot be loaded "
                f"(folds {', '.join(map(str, folder.folds))}, {folder.checkpoint}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if predictor.configuration_manager.previous_stage_name is not None:
            raise NnunetModelError(
                f"nnU-Net model {folder.path} is the second stage of a cascade "
                f"(needs {predictor.configuration_manager.previous_stage_name}'s output): "
                "not supported; configure a 3d_fullres or 2d model folder"
            )
        predictor.network.to(self.device)
        return _Model(folder=folder, predictor=predictor, names=names, orientation=orientation)

    def _predict(self, model: _Model, given: NnunetInput, volume: Volume) -> np.ndarray[Any, Any]:
        try:
            with torch.no_grad():
                labels = model.predictor.predict_single_npy_array(
                    given.array[None], {"spacing": list(given.spacing)}
                )
        except RuntimeError as exc:
            memory = out_of_memory(exc, pipeline=self.name, device=self.device, volume=volume)
            if memory is not None:
                raise memory from exc
            raise ModelRunError(
                f"{self.name}: nnU-Net inference failed on series {volume.series_uid}: {exc}"
            ) from exc
        except (ValueError, AssertionError, IndexError) as exc:
            # nnunetv2's preprocessing refusing this input (e.g. a shape it cannot crop)
            raise ModelRunError(
                f"{self.name}: nnU-Net refused series {volume.series_uid}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return np.asarray(labels)


def _predictor(spec: NnunetSpec, device: torch.device) -> Any:
    """nnunetv2's predictor, imported here: the extra is optional and heavy to import."""
    # nnunetv2 reads these at import and complains when unset; inference does not use them.
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(variable, str(spec.folders[0].path))
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as exc:
        raise NnunetModelError(
            f"pipeline {spec.name} needs nnunetv2: pip install 'pacs-annotator[nnunet]' ({exc})"
        ) from exc
    return nnUNetPredictor(
        tile_step_size=spec.step_size,
        use_gaussian=True,
        use_mirroring=spec.use_mirroring,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )


def _version(spec: NnunetSpec) -> str:
    """dataset.json's ``release`` when the model states one, else "1"."""
    path = spec.folders[0].path / "dataset.json"
    try:
        release = read_json(path).get("release")
    except NnunetModelError:
        return "1"
    return str(release) if release else "1"
