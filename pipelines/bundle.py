"""MONAI bundles as pipelines: a Model Zoo bundle directory runs without rewriting.

The bundle's own config (``configs/inference.json`` or ``.yaml``) is parsed with
``monai.bundle.ConfigParser``: its network, pre-processing, inferer (sliding window
settings included) and post-processing (``Invertd``, a detector's box transforms included)
are used as written; the bundle's own ``scripts/`` package is importable while they run
(``pipelines.bundle_imports``). Only the file I/O is replaced: ``LoadImage(d)`` by the
series already loaded from DICOM (the same array and affine it would have read from a
file), ``SaveImage(d)`` by the SEG/SR. ``overrides`` set config values as MONAI's
``run --key value`` does, without editing the files.

Bundle configs are Python: ``$`` expressions and ``_target_`` run arbitrary code. Bundles
are loaded only from directories an admin configured; they must be trusted like code.

Loading happens once per pipeline object (per worker process), on first use or when
``load()`` is called, and the model then stays on its device for every later job.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.bundle.config_parser import ConfigParser
from monai.data.meta_tensor import MetaTensor

from pipelines.bundle_boxes import BoxFrame, box_frame, frame_to_patient
from pipelines.bundle_files import WEIGHTS, bundle_metadata, check_bundle_dir, config_file
from pipelines.bundle_geometry import to_meta_tensor, to_volume_grid
from pipelines.bundle_imports import BundleModules
from pipelines.bundle_outputs import (
    LabelCode,
    channel_names,
    classifications,
    detections,
    label_code,
    label_maps,
)
from pipelines.device_memory import out_of_memory
from pipelines.errors import BundleError, ModelRunError
from pipelines.findings import Algorithm, Findings, Segment
from pipelines.volume import Volume

logger = logging.getLogger(__name__)

Kind = Literal["auto", "segmentation", "detection", "classification"]
#: Transforms that read or write files: replaced by the pipeline's own DICOM I/O.
_LOADERS = frozenset({"LoadImaged", "LoadImage", "LoadImageD", "LoadImageDict"})
_WRITER_PREFIXES = ("Save", "Write")
#: The key bundles (and MONAI's evaluators) use for the network output.
PRED_KEY = "pred"


@dataclass(frozen=True)
class BundleSpec:
    """A configured bundle pipeline: where the bundle is and how to read its outputs."""

    name: str
    path: Path
    config: str = "inference"
    kind: Kind = "auto"
    modalities: frozenset[str] = frozenset({"CT"})
    labels: Mapping[str, LabelCode] = field(default_factory=dict)
    min_score: float = 0.5
    amp: bool = True
    #: Config values to set before parsing, by MONAI id ("infer_patch_size", "a#b").
    overrides: Mapping[str, Any] = field(default_factory=dict)
    #: Names of the output classes/channels by index; empty: the metadata's channel_def.
    class_names: tuple[str, ...] = ()


@dataclass
class _Loaded:
    """The parsed, weighted, device-placed parts of one bundle."""

    kind: Kind
    network: torch.nn.Module
    detector: Any
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]]
    postprocessing: Callable[[dict[str, Any]], dict[str, Any]] | None
    inferer: Callable[..., Any] | None
    image_key: str
    channel_first: bool
    box_frame: BoxFrame = field(default_factory=BoxFrame)


class BundlePipeline:
    """One MONAI bundle, run on volumes on one device, loaded once and kept warm."""

    def __init__(self, spec: BundleSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.name = spec.name
        self.modalities = spec.modalities
        self.device = torch.device(device)
        metadata = bundle_metadata(spec.path)
        self.algorithm = Algorithm(name=spec.name, version=str(metadata.get("version", "0")))
        self.names = (
            dict(enumerate(spec.class_names))
            if spec.class_names
            else channel_names(_channel_def(metadata))
        )
        self._modules = BundleModules(spec.path)
        self._metadata = metadata
        self._loaded: _Loaded | None = None
        #: How often the model was loaded (a warm worker loads it once).
        self.load_count = 0
        #: Seconds per stage of the last load/run: load, preprocess, inference, postprocess.
        self.timings: dict[str, float] = {}

    def load(self) -> None:
        """Parse the config, build the network, load weights, move to the device (once)."""
        if self._loaded is not None:
            return
        start = time.perf_counter()
        with self._modules.active():
            self._loaded = _load(self.spec, self.device, self._metadata)
        self.load_count += 1
        self.timings["load"] = time.perf_counter() - start
        logger.info(
            "loaded bundle %s (%s, version %s) on %s in %.1f s",
            self.name,
            self._loaded.kind,
            self.algorithm.version,
            self.device,
            self.timings["load"],
        )

    def run(self, volume: Volume) -> Findings:
        try:
            self.load()
        except BundleError as exc:
            # Fails the series with the reason; the other pipelines of the job still run.
            raise ModelRunError(str(exc)) from exc
        loaded = self._loaded
        assert loaded is not None
        with self._modules.active():  # the bundle's transforms may import its scripts
            return self._run(loaded, volume)

    def _run(self, loaded: _Loaded, volume: Volume) -> Findings:
        start = time.perf_counter()
        image = self._preprocess(loaded, volume)
        self.timings["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        output = self._infer(loaded, image, volume)
        self.timings["inference"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            findings = self._findings(loaded, image, output, volume)
        except (RuntimeError, ValueError, KeyError, IndexError) as exc:
            raise ModelRunError(
                f"{self.name}: cannot read the model output for series {volume.series_uid}: {exc}"
            ) from exc
        self.timings["postprocess"] = time.perf_counter() - start
        return findings

    def _preprocess(self, loaded: _Loaded, volume: Volume) -> dict[str, Any]:
        data = {loaded.image_key: to_meta_tensor(volume, channel_first=loaded.channel_first)}
        try:
            return loaded.preprocessing(data)
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ModelRunError(
                f"{self.name}: the bundle's pre-processing failed on series "
                f"{volume.series_uid}: {_describe(exc)}"
            ) from exc

    def _infer(self, loaded: _Loaded, data: dict[str, Any], volume: Volume) -> Any:
        image = data[loaded.image_key]
        tensor = (image.as_tensor() if isinstance(image, MetaTensor) else image).to(self.device)
        try:
            with torch.no_grad(), self._autocast():
                if loaded.kind == "detection":
                    if loaded.inferer is not None:  # e.g. the Model Zoo's RetinaNetInferer
                        return loaded.inferer([tensor], loaded.network)
                    use_inferer = getattr(loaded.detector, "inferer", None) is not None
                    return loaded.detector([tensor], use_inferer=use_inferer)
                batch = tensor[None]
                if loaded.inferer is not None:
                    return loaded.inferer(batch, loaded.network)
                return loaded.network(batch)
        except RuntimeError as exc:
            memory = out_of_memory(exc, pipeline=self.name, device=self.device, volume=volume)
            if memory is not None:
                raise memory from exc
            raise ModelRunError(
                f"{self.name}: inference failed on series {volume.series_uid}: {_describe(exc)}"
            ) from exc

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision on CUDA (the bundles are trained for it); full precision on CPU."""
        if self.device.type == "cuda" and self.spec.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _findings(
        self, loaded: _Loaded, data: dict[str, Any], output: Any, volume: Volume
    ) -> Findings:
        image = data[loaded.image_key]
        affine = np.asarray(image.affine, dtype=np.float64)
        if loaded.kind == "detection":
            detector = loaded.detector
            found = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in output[0].items()}
            scores = _numpy(found[detector.pred_score_key]).astype(np.float64)
            if loaded.postprocessing is not None:
                # As the bundle's own handlers call it: the prediction beside its image.
                found = loaded.postprocessing({**found, loaded.image_key: image})
            boxes = _numpy(found[detector.target_box_key]).astype(np.float64)
            return Findings(
                algorithm=self.algorithm,
                detections=detections(
                    frame_to_patient(boxes, loaded.box_frame, affine),
                    _numpy(found[detector.target_label_key]).astype(np.int64),
                    scores,
                    names=self.names,
                    codes_by_name=self.spec.labels,
                    min_score=self.spec.min_score,
                ),
            )
        if loaded.kind == "classification":
            return Findings(
                algorithm=self.algorithm,
                classifications=classifications(
                    _numpy(output[0]), names=self.names, codes_by_name=self.spec.labels
                ),
            )
        # Carry the pre-processed grid: without Invertd the output stays on it.
        data[PRED_KEY] = MetaTensor(output[0].float().cpu(), affine=image.affine.clone())
        if loaded.postprocessing is not None:
            data = loaded.postprocessing(data)
        pred = data[PRED_KEY]
        if isinstance(pred, MetaTensor):
            affine = np.asarray(pred.affine, dtype=np.float64)
        segments = []
        for labels, names in label_maps(_numpy(pred).astype(np.float32), self.names):
            grid = to_volume_grid(labels, affine, volume)
            for value, name in sorted(names.items()):
                code = label_code(name, self.spec.labels)
                segments.append(
                    Segment(name, grid == value, code.category, code.property_type, code.color)
                )
        return Findings(algorithm=self.algorithm, segments=tuple(segments))


def _describe(exc: BaseException) -> str:
    """MONAI wraps transform errors ("applying transform X"); name the innermost cause too."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if inner is exc:
        return str(exc)
    return f"{exc}: {type(inner).__name__}: {inner}"


def _numpy(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, torch.Tensor):
        tensor = value.as_tensor() if isinstance(value, MetaTensor) else value
        return np.asarray(tensor.detach().float().cpu().numpy())
    return np.asarray(value)


def _channel_def(metadata: Mapping[str, Any]) -> Mapping[str, object]:
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    for output in outputs.values() if isinstance(outputs, dict) else ():
        if isinstance(output, dict) and isinstance(output.get("channel_def"), dict):
            found: Mapping[str, object] = output["channel_def"]
            return found
    return {}


def _resolve_kind(spec: BundleSpec, parser: ConfigParser, metadata: Mapping[str, Any]) -> Kind:
    if spec.kind != "auto":
        return spec.kind
    if parser.get("detector") is not None:
        return "detection"
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    for output in outputs.values() if isinstance(outputs, dict) else ():
        if isinstance(output, dict) and "class" in str(output.get("format", "")).lower():
            return "classification"
    return "segmentation"


def _target_name(item: object) -> str:
    if isinstance(item, dict):
        return str(item.get("_target_", "")).rsplit(".", 1)[-1]
    return ""


def _strip_file_io(parser: ConfigParser) -> tuple[str, bool]:
    """Drop loaders from ``preprocessing`` and writers from ``postprocessing`` (raw config).

    Returns the image key the loader read into and whether it made the channel first.
    """
    image_key: Any = parser.get("image_key", "image")
    channel_first = False
    pre = parser.get("preprocessing")
    if isinstance(pre, dict) and isinstance(pre.get("transforms"), list):
        kept = []
        for item in pre["transforms"]:
            if _target_name(item) in _LOADERS:
                image_key = item.get("keys", image_key)
                channel_first = bool(item.get("ensure_channel_first", False))
                continue
            kept.append(item)
        parser["preprocessing#transforms"] = kept
    post = parser.get("postprocessing")
    if isinstance(post, dict) and isinstance(post.get("transforms"), list):
        parser["postprocessing#transforms"] = [
            item
            for item in post["transforms"]
            if not _target_name(item).startswith(_WRITER_PREFIXES)
        ]
    if isinstance(image_key, str) and image_key.startswith("@"):
        image_key = parser.get_parsed_content(image_key[1:])
    if isinstance(image_key, list | tuple):
        image_key = image_key[0]
    return str(image_key), channel_first


def _load(spec: BundleSpec, device: torch.device, metadata: Mapping[str, Any]) -> _Loaded:
    check_bundle_dir(spec.path, spec.config)
    parser = ConfigParser()
    parser.read_config(str(config_file(spec.path, spec.config)))
    if metadata:
        parser.read_meta(dict(metadata))
    parser.update(dict(spec.overrides))
    parser["bundle_root"] = str(spec.path)
    parser["device"] = f"$torch.device({str(device)!r})"
    try:
        image_key, channel_first = _strip_file_io(parser)
        network = _network(spec.path, parser, device)
        kind = _resolve_kind(spec, parser, metadata)
        detector = None
        if kind == "detection":
            detector = parser.get_parsed_content("detector")
            if parser.get("detector_ops") is not None:
                parser.get_parsed_content("detector_ops")
            detector.eval()
        preprocessing = parser.get_parsed_content("preprocessing")
        postprocessing = None
        if kind != "classification" and parser.get("postprocessing") is not None:
            postprocessing = parser.get_parsed_content("postprocessing")
        inferer = None
        if parser.get("inferer") is not None:
            inferer = parser.get_parsed_content("inferer")
        frame = box_frame(postprocessing) if kind == "detection" else BoxFrame()
    except (RuntimeError, ValueError, KeyError, AttributeError, TypeError, ImportError) as exc:
        raise BundleError(f"bundle {spec.name} ({spec.path}) cannot be loaded: {exc}") from exc
    return _Loaded(
        kind=kind,
        network=network,
        detector=detector,
        preprocessing=preprocessing,
        postprocessing=postprocessing,
        inferer=inferer,
        image_key=image_key,
        channel_first=channel_first,
        box_frame=frame,
    )


def _network(path: Path, parser: ConfigParser, device: torch.device) -> torch.nn.Module:
    """``network_def`` with ``models/model.pt`` loaded into it, or TorchScript ``model.ts``."""
    weights = path / WEIGHTS[0]
    if parser.get("network_def") is not None and weights.is_file():
        network: torch.nn.Module = parser.get_parsed_content("network_def")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(
                f"bundle {path}: {WEIGHTS[0]} does not fit network_def: {exc}"
            ) from exc
    elif (path / WEIGHTS[1]).is_file():
        network = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path / WEIGHTS[1]), map_location=device
        )
    else:
        raise BundleError(f"bundle {path}: needs network_def with {WEIGHTS[0]}, or {WEIGHTS[1]}")
    return network.to(device).eval()
