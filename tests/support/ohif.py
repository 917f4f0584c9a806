"""The OHIF Viewer served beside a test Orthanc under one HTTP origin.

>>> port = free_port()
>>> with Orthanc(extra_config={"DicomWeb": dicomweb_config(port)}) as pacs, \\
...         OhifServer(pacs.dicomweb_url, port=port) as viewer:
...     page.goto(viewer.viewer_url(study_uid))

One origin (``http://127.0.0.1:PORT``) serves:

* ``/app-config.js``: a generated OHIF configuration whose only data source is DICOMweb at
  ``/dicom-web`` on the same origin (no CORS), with what Orthanc 1.10's DICOMweb plugin 1.7
  cannot do switched off;
* ``/dicom-web/...``: a streaming reverse proxy to Orthanc's DICOMweb root (method, query
  string, Accept and Content-Type headers and multipart bodies passed through unchanged).
  Orthanc writes absolute URLs into its answers (BulkDataURI, RetrieveURL), so its
  ``DicomWeb.Host`` must name this origin: :func:`dicomweb_config` does that;
* everything else: the prebuilt OHIF ``dist/`` from the npm package ``@ohif/app``, with the
  single-page-app fallback to ``index.html`` for routes such as ``/viewer``.

The viewer comes from ``deploy/install.sh --dev`` (``.cache/ohif/OHIF_VERSION/dist``);
nothing is downloaded at test time.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest
import uvicorn
from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.processes import free_port

__all__ = [
    "OHIF_DIST",
    "OHIF_VERSION",
    "OhifServer",
    "RtRoi",
    "SegSegment",
    "SrMark",
    "dicom_lab_to_rgb",
    "dicomweb_config",
    "require_ohif",
    "rt_rois",
    "seg_segments",
    "sr_marks",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Keep in step with ohif_version in deploy/install.sh.
OHIF_VERSION = "3.13.2"
OHIF_DIST = REPO_ROOT / ".cache" / "ohif" / OHIF_VERSION / "dist"

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded; Host is the proxy's own.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

_MIME_TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".html": "text/html",
}


def require_ohif(dist: Path = OHIF_DIST) -> Path:
    """The OHIF ``dist/`` directory; fail (not skip) when it is missing.

    ``deploy/install.sh --dev`` always installs it, so a missing viewer is a broken set-up,
    not an optional component.
    """
    if not (dist / "index.html").is_file():
        pytest.fail(
            f"OHIF Viewer {OHIF_VERSION} not found at {dist}: run `bash deploy/install.sh --dev` "
            "(it fetches @ohif/app from npm into .cache/ohif/)",
            pytrace=False,
        )
    return dist


def dicomweb_config(proxy_port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    """Orthanc's ``DicomWeb`` section for a DICOMweb root reached through the proxy.

    ``Host`` is the proxy's origin, so the absolute URLs Orthanc returns (BulkDataURI in
    metadata, RetrieveURL in QIDO answers) lead back through it. ``Full`` metadata keeps
    the sequences (SR content tree, SEG functional groups) in the WADO-RS metadata answers.
    """
    return {
        "Enable": True,
        "Root": "/dicom-web/",
        "EnableWado": True,
        "WadoRoot": "/wado",
        "Host": f"{host}:{proxy_port}",
        "Ssl": False,
        "StudiesMetadata": "Full",
        "SeriesMetadata": "Full",
    }


def app_config_js(data_source_name: str = "orthanc") -> str:
    """The generated ``app-config.js`` (same keys as the dist's own ``app-config.js``).

    Orthanc's DICOMweb plugin 1.7 answers QIDO without ``includefield`` support, has no
    fuzzy matching, no reject, no ``/thumbnail`` and is not a static WADO server, so those
    are off; thumbnails are rendered from WADO-RS pixel data instead.
    """
    root = "/dicom-web"
    data_source: dict[str, Any] = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": data_source_name,
        "configuration": {
            "friendlyName": "pacs-annotator test Orthanc",
            "name": data_source_name,
            "wadoUriRoot": "/wado",
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "supportsStow": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config: dict[str, Any] = {
        "name": "pacs-annotator tests",
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": data_source_name,
        "dataSources": [data_source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


def _media_type(path: Path) -> str:
    known = _MIME_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


class OhifServer:
    """OHIF + a DICOMweb proxy on one origin, run by uvicorn in a thread (context manager).

    Arguments:
        dicomweb_upstream: Orthanc's DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        port: the origin's port (pick it first with ``free_port()`` when Orthanc must know it).
        dist: the OHIF ``dist/`` directory.
        extra_config: not used by OHIF; keys merged into ``window.config`` (overrides).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        dicomweb_upstream: str,
        *,
        port: int | None = None,
        dist: Path = OHIF_DIST,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.upstream = dicomweb_upstream.rstrip("/")
        self.port = port or free_port()
        self.dist = require_ohif(dist).resolve()
        self.config_js = app_config_js()
        if extra_config:
            self.config_js += "".join(
                f"window.config[{json.dumps(k)}] = {json.dumps(v)};\n"
                for k, v in extra_config.items()
            )
        self.startup_timeout = startup_timeout
        self.proxied: list[tuple[str, str, int]] = []  # (method, path?query, status)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._index = (self.dist / "index.html").read_bytes()

    @property
    def url(self) -> str:
        """The origin, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def viewer_url(self, study_uid: str, mode: str = "viewer", **params: str) -> str:
        query = urlencode({"StudyInstanceUIDs": study_uid, **params})
        return f"{self.url}/{mode}?{query}"

    # ------------------------------------------------------------------ the ASGI app

    def build_app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(120.0, connect=10.0), trust_env=False
            ) as client:
                # httpx would ask for gzip on every request; pass on only what the browser
                # asked for (its Accept-Encoding is forwarded with the other headers).
                del client.headers["accept-encoding"]
                self._client = client
                yield
                self._client = None

        return Starlette(
            routes=[
                Route("/app-config.js", self._app_config, methods=["GET", "HEAD"]),
                Route(
                    "/dicom-web/{path:path}",
                    self._proxy,
                    methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                ),
                Route("/{path:path}", self._static, methods=["GET", "HEAD"]),
            ],
            lifespan=lifespan,
        )

    async def _app_config(self, _request: Request) -> Response:
        return Response(
            self.config_js,
            media_type="text/javascript",
            headers={"Cache-Control": "no-store"},
        )

    async def _static(self, request: Request) -> Response:
        relative = request.path_params["path"]
        candidate = (self.dist / relative).resolve()
        if relative and candidate.is_file() and candidate.is_relative_to(self.dist):
            return FileResponse(candidate, media_type=_media_type(candidate))
        # Single-page app: /viewer, /segmentation, ... are client-side routes.
        return Response(self._index, media_type="text/html")

    async def _proxy(self, request: Request) -> Response:
        assert self._client is not None, "proxy used outside the server's lifespan"
        path = request.path_params["path"]
        url = f"{self.upstream}/{path}"
        query = request.url.query
        if query:
            url += f"?{query}"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        has_body = request.method in ("POST", "PUT")

        def upstream() -> httpx.Request:
            assert self._client is not None
            return self._client.build_request(
                request.method,
                httpx.URL(url),
                headers=headers,
                content=request.stream() if has_body else None,
            )

        try:
            response = await self._client.send(upstream(), stream=True)
        except httpx.RemoteProtocolError:
            if has_body:
                raise
            # Orthanc closed a kept-alive connection just as the pool reused it (the
            # browser's many frame requests hit this on a loaded machine): a request
            # without a body is sent again, on a fresh connection.
            response = await self._client.send(upstream(), stream=True)
        self.proxied.append(
            (request.method, f"/{path}" + (f"?{query}" if query else ""), response.status_code)
        )
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=out_headers,
            background=BackgroundTask(response.aclose),
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("OHIF server already started")
        config = uvicorn.Config(
            self.build_app(),
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="ohif-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"OHIF server on port {self.port} did not start")
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"OHIF server on port {self.port} not up in time")
            time.sleep(0.05)
        return self

    async def _serve(self) -> None:
        assert self._server is not None
        await self._server.serve()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class SrMark:
    """One measurement as OHIF's SR parser builds it: the groups of one tracking UID merged.

    ``graphic`` is the SCOORD/SCOORD3D OHIF draws (``coords[0]``): the first top-level one
    (TID 1410), else the first one a NUM is INFERRED FROM (TID 1411/1501); None when the
    merged groups carry no geometry (OHIF 3.13 then throws a TypeError reading
    ``coords[0].ReferencedSOPSequence`` and the whole SR fails to load).
    """

    tracking_uid: str
    tracking_id: str
    value_type: str | None
    graphic_type: str | None
    referenced_sop_uid: str | None
    measurements: tuple[str, ...]  # concept names of the NUMs, e.g. ("Long axis", "Volume")

    @property
    def image_referenced(self) -> bool:
        return self.value_type == "SCOORD" and self.referenced_sop_uid is not None


_IMAGING_MEASUREMENTS = "126010"
_MEASUREMENT_GROUP = "125007"
_TRACKING_UID = "112040"
_TRACKING_ID = "112039"


def _concept(item: Dataset) -> str | None:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else None


def _referenced_sop(scoord: Dataset) -> str | None:
    for child in scoord.get("ContentSequence", []):
        refs = child.get("ReferencedSOPSequence")
        if child.ValueType == "IMAGE" and refs:
            return str(refs[0].ReferencedSOPInstanceUID)
    return None


def sr_marks(sr: Dataset) -> list[SrMark]:
    """What OHIF 3.13 (extension cornerstone-dicom-sr, ``_getMeasurements``) makes of an SR.

    Groups under "Imaging Measurements" are merged by Tracking Unique Identifier (first
    appearance order, OHIF's display order); see :class:`SrMark` for the geometry picked.
    """
    containers = [i for i in sr.ContentSequence if _concept(i) == _IMAGING_MEASUREMENTS]
    if not containers:
        return []
    merged: dict[str, list[Dataset]] = {}
    for group in containers[0].get("ContentSequence", []):
        if _concept(group) != _MEASUREMENT_GROUP:
            continue
        items = list(group.get("ContentSequence", []))
        uid = next((str(i.UID) for i in items if _concept(i) == _TRACKING_UID), "")
        if uid in merged:
            merged[uid] += [i for i in items if _concept(i) != _TRACKING_UID]
        else:
            merged[uid] = items
    marks = []
    for uid, items in merged.items():
        graphic = next((i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")), None)
        nums = [i for i in items if i.ValueType == "NUM"]
        if graphic is None:
            inferred = (
                child
                for num in nums
                for child in num.get("ContentSequence", [])
                if child.ValueType in ("SCOORD", "SCOORD3D")
            )
            graphic = next(inferred, None)
        tracking_id = next((str(i.TextValue) for i in items if _concept(i) == _TRACKING_ID), "")
        marks.append(
            SrMark(
                tracking_uid=uid,
                tracking_id=tracking_id,
                value_type=str(graphic.ValueType) if graphic is not None else None,
                graphic_type=str(graphic.GraphicType) if graphic is not None else None,
                referenced_sop_uid=_referenced_sop(graphic) if graphic is not None else None,
                measurements=tuple(str(num.ConceptNameCodeSequence[0].CodeMeaning) for num in nums),
            )
        )
    return marks


@dataclass(frozen=True)
class SegSegment:
    number: int
    label: str
    rgb: tuple[int, int, int] | None  # from RecommendedDisplayCIELabValue, None if absent


def dicom_lab_to_rgb(value: Sequence[int]) -> tuple[int, int, int]:
    """DICOM's scaled CIELab (PS3.3 C.10.7.1.1) to 8-bit sRGB, as dcmjs' ``dicomlab2RGB``."""
    from skimage.color import lab2rgb

    lab = np.array(
        [
            float(value[0]) * 100.0 / 65535.0,
            float(value[1]) * 255.0 / 65535.0 - 128.0,
            float(value[2]) * 255.0 / 65535.0 - 128.0,
        ]
    )
    rgb = np.clip(lab2rgb(lab.reshape(1, 1, 3)).reshape(3), 0.0, 1.0)
    r, g, b = (round(float(c) * 255.0) for c in rgb)
    return (r, g, b)


def seg_segments(seg: Dataset) -> list[SegSegment]:
    out = []
    for item in seg.SegmentSequence:
        lab = item.get("RecommendedDisplayCIELabValue")
        out.append(
            SegSegment(
                number=int(item.SegmentNumber),
                label=str(item.SegmentLabel),
                rgb=dicom_lab_to_rgb([int(v) for v in lab]) if lab else None,
            )
        )
    return out


@dataclass(frozen=True)
class RtRoi:
    """One ROI of an RT Structure Set: what OHIF should list and where it should draw it."""

    number: int
    name: str
    rgb: tuple[int, int, int]
    images: frozenset[str]  # SOP Instance UIDs of the images its contours lie on


def rt_rois(rtstruct: Dataset) -> list[RtRoi]:
    contours = {int(item.ReferencedROINumber): item for item in rtstruct.ROIContourSequence}
    out = []
    for roi in rtstruct.StructureSetROISequence:
        item = contours[int(roi.ROINumber)]
        images = frozenset(
            str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            for contour in item.ContourSequence
        )
        r, g, b = (int(v) for v in item.ROIDisplayColor)
        out.append(RtRoi(int(roi.ROINumber), str(roi.ROIName), (r, g, b), images))
    return out
