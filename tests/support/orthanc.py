"""A real Orthanc PACS for tests: started on free ports with a generated config, driven by REST.

>>> with Orthanc(modalities={"ANNOTATOR": ("ANNOTATOR", "127.0.0.1", 11112)}) as pacs:
...     ids = pacs.upload_dir(ct_dir)
...     study_id = pacs.study_id_for_uid(study_uid)
...     pacs.store_to_modality("ANNOTATOR", study_id)

Orthanc 1.10 as packaged by Debian: ``/usr/sbin/Orthanc CONFIG.json``. It binds DICOM on 0.0.0.0,
keeps Nagle on for its DICOM port unless ``TCP_NODELAY=1`` is in its environment, and takes more
than 2 s to exit after SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from tests.support.processes import (
    free_port,
    log_tail,
    require_binaries,
    stop_process,
    wait_for_port,
)

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC_BINARY",
    "Orthanc",
    "OrthancError",
    "require_binaries",
    "require_orthanc",
    "wait_for",
]

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

T = TypeVar("T")

# A modality is (AET, host, port) or a full Orthanc modality object
# ({"AET": ..., "Host": ..., "Port": ..., "AllowTranscoding": ...}).
ModalitySpec = tuple[str, str, int] | Mapping[str, Any]


class OrthancError(RuntimeError):
    """Orthanc failed to start, or a REST call did not give the expected answer."""


def require_orthanc() -> None:
    """Skip the calling test unless Orthanc and its DICOMweb plugin are installed."""
    require_binaries(ORTHANC_BINARY, DICOMWEB_PLUGIN)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    Raises ``TimeoutError`` naming ``message`` (and the last value seen) after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.1f} s waiting for {message} (last value: {value!r})"
            )
        time.sleep(interval)


def _modality_entry(spec: ModalitySpec) -> list[Any] | dict[str, Any]:
    if isinstance(spec, Mapping):
        return dict(spec)
    aet, host, port = spec
    return [aet, host, int(port)]


def _is_part10(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


class Orthanc:
    """A throwaway Orthanc server (context manager).

    Arguments:
        aet: Orthanc's own AE title (``DicomAet``).
        modalities: ``DicomModalities``: name -> (AET, host, port), or a full modality dict.
            More can be added after start with :meth:`add_modality`.
        users: HTTP basic-auth users (name -> password). Giving users turns authentication on.
        authentication: force ``AuthenticationEnabled`` (default: on iff ``users`` is given).
        stable_age: ``StableAge`` in seconds (when a study/series counts as complete).
        workdir: directory for config, storage, index and log; default a fresh temp dir that
            is deleted on exit (a given ``workdir`` is kept).
        extra_config: merged last into the generated configuration (overrides anything).
        verbose: start Orthanc with ``--verbose`` (its log goes to :attr:`log_path`).
        startup_timeout / stop_timeout: seconds.
        binary / plugins: the Orthanc executable and plugin paths (default: DICOMweb only).
        association_close_delay: ``DicomAssociationCloseDelay`` (Orthanc's default is 5 s;
            0 here so a C-STORE from Orthanc is released as soon as the job ends).
        graceful_stop: False sends SIGKILL straight away on stop (saves ~3 s per server;
            only for throwaway storage).

    Properties after start: ``http_url``, ``http_port``, ``dicom_port``, ``aet``,
    ``dicomweb_url``, ``auth``, ``client`` (an ``httpx.Client`` with base URL and auth),
    ``config``, ``config_path``, ``log_path``, ``workdir``, ``storage_dir``, ``pid``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        aet: str = "ORTHANC",
        modalities: Mapping[str, ModalitySpec] | None = None,
        users: Mapping[str, str] | None = None,
        authentication: bool | None = None,
        stable_age: int = 60,
        workdir: Path | str | None = None,
        extra_config: Mapping[str, Any] | None = None,
        verbose: bool = False,
        startup_timeout: float = 30.0,
        stop_timeout: float = 20.0,
        binary: str = ORTHANC_BINARY,
        plugins: Iterable[str] = (DICOMWEB_PLUGIN,),
        association_close_delay: int = 0,
        graceful_stop: bool = True,
    ) -> None:
        for path in (binary, *plugins):
            if not Path(path).exists():
                raise OrthancError(
                    f"{path} not found: install the Debian packages 'orthanc' and "
                    "'orthanc-dicomweb' (or call tests.support.orthanc.require_orthanc() to skip)"
                )
        self._aet = aet
        self.modalities: dict[str, ModalitySpec] = dict(modalities or {})
        self.users: dict[str, str] = dict(users or {})
        self.authentication = bool(self.users) if authentication is None else authentication
        self.stable_age = stable_age
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self.verbose = verbose
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary
        self.plugins = list(plugins)
        self.association_close_delay = association_close_delay
        self.graceful_stop = graceful_stop

        self._given_workdir = Path(workdir) if workdir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir: Path | None = None
        self.config: dict[str, Any] = {}
        self.proc: subprocess.Popen[Any] | None = None
        self._client: httpx.Client | None = None
        self.http_port = 0
        self.dicom_port = 0

    # ------------------------------------------------------------------ properties

    @property
    def aet(self) -> str:
        return self._aet

    @property
    def http_url(self) -> str:
        """e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root, e.g. ``http://127.0.0.1:41234/dicom-web`` (no trailing slash)."""
        return f"{self.http_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        """(user, password) of the first registered user when authentication is on."""
        if not self.authentication or not self.users:
            return None
        user, password = next(iter(self.users.items()))
        return (user, password)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise OrthancError("Orthanc is not started")
        return self._client

    @property
    def config_path(self) -> Path:
        return self._require_workdir() / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self._require_workdir() / "orthanc.log"

    @property
    def storage_dir(self) -> Path:
        return self._require_workdir() / "storage"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _require_workdir(self) -> Path:
        if self.workdir is None:
            raise OrthancError("Orthanc is not started")
        return self.workdir

    # ------------------------------------------------------------------ lifecycle

    def build_config(self) -> dict[str, Any]:
        """The JSON configuration for the current ports and settings."""
        storage = str(self.storage_dir)
        config: dict[str, Any] = {
            "Name": f"pacs-annotator-test-{self.http_port}",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": list(self.plugins),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpDescribeErrors": True,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": self.authentication,
            "RegisteredUsers": dict(self.users),
            "DicomServerEnabled": True,
            "DicomAet": self._aet,
            "DicomPort": self.dicom_port,
            # Accept C-STORE from any AE (the annotator), whatever called AET it uses.
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "UnknownSopClassAccepted": False,
            "DicomModalities": {
                name: _modality_entry(spec) for name, spec in self.modalities.items()
            },
            "DicomModalitiesInDatabase": False,
            "DicomScuTimeout": 10,
            # Orthanc's default keeps its SCU associations open 5 s after a job; tests want
            # the A-RELEASE (the annotator's "study received" signal) at once.
            "DicomAssociationCloseDelay": self.association_close_delay,
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "OverwriteInstances": False,
            "ConcurrentJobs": 2,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Host": f"{self.host}:{self.http_port}",
                "Ssl": False,
            },
        }
        config.update(self.extra_config)
        return config

    def start(self) -> Self:
        if self.proc is not None:
            raise OrthancError("Orthanc already started")
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._given_workdir
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="pacs-annotator-orthanc-")
            self.workdir = Path(self._tmp.name)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        try:
            # free_port() is racy; a second attempt with new ports covers "address in use".
            for attempt in range(3):
                try:
                    self._start_once()
                    return self
                except OrthancError:
                    if attempt == 2 or "in use" not in log_tail(self.log_path, 200).lower():
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_once(self) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.config = self.build_config()
        # extra_config may pin the ports; keep the properties truthful
        self.http_port = int(self.config["HttpPort"])
        self.dicom_port = int(self.config["DicomPort"])
        self.config_path.write_text(json.dumps(self.config, indent=2))

        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"  # DCMTK's DICOM listener leaves Nagle on without it
        env.pop("http_proxy", None)
        env.pop("HTTP_PROXY", None)
        cmd = [self.binary, str(self.config_path)]
        if self.verbose:
            cmd.insert(1, "--verbose")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
            )
        self._client = httpx.Client(
            base_url=self.http_url, auth=self.auth, timeout=60.0, trust_env=False
        )

        deadline = time.monotonic() + self.startup_timeout
        last: str = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                self._fail_start(f"Orthanc exited with code {self.proc.returncode}")
            try:
                response = self._client.get("/system", timeout=2.0)
                if response.status_code == 200:
                    break
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                last = repr(exc)
            if time.monotonic() >= deadline:
                self._fail_start(
                    f"GET /system did not answer 200 within {self.startup_timeout:.0f} s "
                    f"(last: {last})"
                )
            time.sleep(0.1)
        try:
            wait_for_port(self.host, self.dicom_port, timeout=10.0, proc=self.proc)
        except (TimeoutError, RuntimeError) as exc:
            self._fail_start(f"DICOM port {self.dicom_port} not listening: {exc}")
        # Orthanc 1.10 only logs "Inexistent path to plugins" and starts anyway: check.
        if DICOMWEB_PLUGIN in self.config.get("Plugins", []):
            loaded = self._client.get("/plugins").json()
            if "dicom-web" not in loaded:
                self._fail_start(f"DICOMweb plugin not loaded (GET /plugins = {loaded!r})")

    def _fail_start(self, reason: str) -> None:
        tail = log_tail(self.log_path)
        self._stop_process()
        raise OrthancError(
            f"{reason} (HTTP {self.http_port}, DICOM {self.dicom_port}, "
            f"config {self.config_path}); Orthanc log tail:\n{tail}"
        )

    def _stop_process(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            # SIGTERM takes Orthanc >2 s; graceful_stop=False kills at once (fine for a
            # throwaway storage dir, never for one that is reused).
            stop_process(self.proc, timeout=self.stop_timeout if self.graceful_stop else 0.0)
            self.proc = None

    def stop(self) -> None:
        """Stop Orthanc and wait until its PID is gone, then delete the temp workdir."""
        self._stop_process()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST helpers

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise OrthancError(
                f"Orthanc {response.request.method} {response.request.url.path} -> "
                f"HTTP {response.status_code}: {response.text[:2000]}"
            )
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self._check(self.client.get(path, **kwargs)).json()

    def post_json(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        if isinstance(body, str | bytes):
            response = self.client.post(path, content=body, **kwargs)
        else:
            response = self.client.post(path, json=body, **kwargs)
        self._check(response)
        return response.json() if response.content else None

    def system(self) -> dict[str, Any]:
        """GET /system."""
        result: dict[str, Any] = self.get_json("/system")
        return result

    def statistics(self) -> dict[str, Any]:
        """GET /statistics (CountPatients, CountStudies, CountSeries, CountInstances...)."""
        result: dict[str, Any] = self.get_json("/statistics")
        return result

    def instance_count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def upload(self, path: Path | str) -> str:
        """POST /instances with one DICOM file; returns the Orthanc instance id.

        An instance already stored is not an error (Status "AlreadyStored").
        """
        data = Path(path).read_bytes()
        response = self._check(
            self.client.post(
                "/instances", content=data, headers={"Content-Type": "application/dicom"}
            )
        )
        body = response.json()
        if body.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload of {path} gave {body!r}")
        return str(body["ID"])

    def upload_dir(
        self, directory: Path | str, pattern: str = "*", only_part10: bool = True
    ) -> list[str]:
        """Upload the DICOM files under ``directory`` (recursive, sorted by path).

        With ``only_part10`` (default) only files with the "DICM" magic at offset 128 are sent,
        so LICENSE/README files beside the data are skipped; DICOMDIR is always skipped.
        Returns instance ids in file order.
        """
        files = sorted(
            p
            for p in Path(directory).rglob(pattern)
            if p.is_file() and p.name.upper() != "DICOMDIR" and (not only_part10 or _is_part10(p))
        )
        if not files:
            raise OrthancError(f"no DICOM files to upload under {directory}")
        return [self.upload(p) for p in files]

    def store_to_modality(
        self,
        name: str,
        resource_id: str | Iterable[str],
        synchronous: bool = True,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """C-STORE a study/series/instance (Orthanc ids) to a configured modality.

        POST /modalities/{name}/store {"Resources": [...], "Synchronous": ...}. Synchronous:
        returns once every instance is sent (the answer has "FailedInstancesCount",
        "InstancesCount"...); raises OrthancError if the job failed. Asynchronous: returns
        {"ID": job_id, "Path": ...}; follow it with :meth:`job` / :meth:`wait_for_job`.
        """
        resources = [resource_id] if isinstance(resource_id, str) else list(resource_id)
        result: dict[str, Any] = self.post_json(
            f"/modalities/{name}/store",
            {"Resources": resources, "Synchronous": synchronous},
            timeout=timeout,
        )
        if synchronous and int(result.get("FailedInstancesCount", 0)):
            raise OrthancError(f"store to {name} had failures: {result!r}")
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}."""
        result: dict[str, Any] = self.get_json(f"/jobs/{job_id}")
        return result

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll an asynchronous job until "Success"; OrthancError if it fails."""

        def finished() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["State"] == "Failure":
                raise OrthancError(f"Orthanc job {job_id} failed: {job!r}")
            return job if job["State"] == "Success" else None

        return wait_for(finished, timeout=timeout, interval=0.1, message=f"job {job_id}")

    def add_modality(self, name: str, aet: str, host: str, port: int, **options: Any) -> None:
        """PUT /modalities/{name} at run time (kept in memory; lost on restart)."""
        body = {"AET": aet, "Host": host, "Port": int(port), **options}
        self._check(self.client.put(f"/modalities/{name}", json=body))
        self.modalities[name] = body

    def echo_modality(self, name: str, timeout: int = 5) -> bool:
        """C-ECHO from Orthanc to a configured modality; True when it answers."""
        response = self.client.post(f"/modalities/{name}/echo", json={"Timeout": timeout})
        return response.status_code == 200

    def studies(self) -> list[str]:
        """GET /studies: Orthanc study ids."""
        return [str(s) for s in self.get_json("/studies")]

    def study_id_for_uid(self, study_uid: str) -> str | None:
        """Orthanc id of the study with this StudyInstanceUID (POST /tools/lookup), or None."""
        matches = self.post_json("/tools/lookup", study_uid)
        for match in matches or []:
            if match.get("Type") == "Study":
                return str(match["ID"])
        return None

    def series_of_study(self, study_id: str) -> list[dict[str, Any]]:
        """GET /studies/{id}/series: dicts with "ID", "MainDicomTags" (Modality,
        SeriesInstanceUID, SeriesNumber...), "Instances" (instance ids), "Status"...
        """
        result: list[dict[str, Any]] = self.get_json(f"/studies/{study_id}/series")
        return result

    def instances_of_series(self, series_id: str) -> list[dict[str, Any]]:
        """GET /series/{id}/instances: dicts with "ID", "MainDicomTags" (SOPInstanceUID,
        InstanceNumber...), "IndexInSeries", "FileSize"...
        """
        result: list[dict[str, Any]] = self.get_json(f"/series/{series_id}/instances")
        return result

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """GET /instances/{id}/tags?simplify: keyword -> value (sequences as lists of dicts)."""
        result: dict[str, Any] = self.get_json(f"/instances/{instance_id}/tags?simplify")
        return result

    def download_instance(self, instance_id: str, dest_path: Path | str) -> Path:
        """GET /instances/{id}/file into ``dest_path`` (parents created); returns the path."""
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.client.stream("GET", f"/instances/{instance_id}/file") as response:
            if response.is_error:
                response.read()
                self._check(response)
            with dest.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return dest

    def delete_all(self) -> None:
        """Delete every patient (and so every study/series/instance): reset between tests."""
        for patient_id in self.get_json("/patients"):
            self._check(self.client.delete(f"/patients/{patient_id}"))

    def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 10.0,
        interval: float = 0.1,
        message: str = "condition",
    ) -> T:
        """Same as the module-level :func:`wait_for` (convenience)."""
        return wait_for(predicate, timeout=timeout, interval=interval, message=message)
