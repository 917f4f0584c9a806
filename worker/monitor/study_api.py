"""The central node's study API for remote workers (``/remote/v1/...``), beside the monitor.

A worker on another machine shares only the broker and the job database with the central
node. It claims a job in the database as any worker does, then, with its own token
(``pacs-annotator worker-token create NAME``, checked on every request):

- lists the job's sealed study (``GET .../study``: names, sizes, SHA-256) and downloads
  each instance (``GET .../study/<series>/<sop>.dcm``, with ``Range`` to resume);
- asks for results an earlier attempt committed (``GET .../results`` and its files), so a
  retry delivers the same bytes and computes nothing again;
- uploads its results into a staging folder (``PUT .../uploads/<id>/<name>``, each file
  checked against its announced size and SHA-256) and commits them
  (``POST .../uploads/<id>/commit``): checked again, fsynced and renamed into
  ``data_dir/results/<job id>`` in one step, where previews, retries and the purge find
  them as if a local worker had written them;
- adds its delivery timings (``PUT .../timings``).

Only a job that is running or delivering is served: a token opens the studies being worked
on, not the archive. The central copy stays the truth until results are committed; a worker
that dies mid-transfer leaves at most a staging folder here, removed after a day.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from scu_scp.spool import Spool, UnknownBatchError, fsync_dir, validate_uid
from worker.config import Settings
from worker.jobs.store import Job, JobState, JobStore
from worker.jobs.worker_tokens import WorkerTokenStore
from worker.run.manifest import (
    FileEntry,
    ManifestError,
    check_result_name,
    check_study_name,
    describe,
    fsync_tree,
    parse_entries,
    verify_file,
)
from worker.run.results import MANIFEST
from worker.run.timings import TIMINGS, record_timings

log = logging.getLogger(__name__)

PREFIX = "/remote/v1"
_ACTIVE = (JobState.RUNNING, JobState.DELIVERING)
_UPLOAD_ID = re.compile(r"^[0-9a-f]{16,64}$")
#: Upload folders older than this are a dead worker's: removed at the next commit.
STALE_UPLOAD_SECONDS = 86400.0
#: No single results file is larger than this (a SEG of a very large series is far less).
MAX_RESULT_FILE_BYTES = 4 * 1024**3


class StudyApi:
    """Serves sealed studies and accepts results; every method checks the job first."""

    def __init__(self, settings: Settings, store: JobStore, spool: Spool) -> None:
        self.settings = settings
        self.store = store
        self.spool = spool
        self.tokens = WorkerTokenStore(store.engine)
        self.uploads = settings.data_dir / "remote" / "uploads"
        self._commit_lock = threading.Lock()

    def worker(self, request: Request) -> str:
        """The worker name of the request's bearer token; 401 otherwise."""
        header = request.headers.get("authorization", "")
        name = None
        if header.lower().startswith("bearer "):
            name = self.tokens.check(header[7:].strip())
        if name is None:
            raise HTTPException(
                401,
                "a remote worker's token is required (pacs-annotator worker-token create); "
                "this one is unknown or revoked",
                {"WWW-Authenticate": "Bearer"},
            )
        return name

    def active_job(self, job_id: str) -> Job:
        job = self.store.get(job_id)  # UnknownJobError: 404 (the app's handler)
        if job.state not in _ACTIVE:
            raise HTTPException(
                409, f"job {job_id} is {job.state.value}: only a running job's data is served"
            )
        return job

    def study_folder(self, job: Job) -> Path:
        try:
            return self.spool.open_sealed(job.id).path
        except UnknownBatchError as exc:
            raise HTTPException(
                404, f"job {job.id}: its received instances are not in the spool"
            ) from exc

    def study_listing(self, job: Job) -> list[FileEntry]:
        folder = self.study_folder(job)
        names = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*.dcm"))
        return describe(folder, names)

    def results_folder(self, job: Job) -> Path:
        return self.settings.results_dir / job.id

    def results_listing(self, job: Job) -> list[FileEntry] | None:
        """The committed results (manifest last in the list), None if there are none."""
        folder = self.results_folder(job)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        names = [f"{uid}.dcm" for uid in manifest["outputs"]]
        if (folder / TIMINGS).exists():
            names.append(TIMINGS)
        return describe(folder, [*names, MANIFEST])

    def upload_folder(self, job: Job, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise HTTPException(400, "an upload id is 16-64 lowercase hex digits")
        return self.uploads / f"{job.id}.{upload_id}"

    async def receive(self, request: Request, target: Path, entry: FileEntry) -> None:
        """Stream the body into ``target``; 400 unless it is exactly the announced bytes."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        received = 0
        with part.open("wb") as fh:
            async for chunk in request.stream():
                received += len(chunk)
                if received > entry.size:
                    break
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            await run_in_threadpool(verify_file, part, entry)
        except ManifestError as exc:
            part.unlink(missing_ok=True)
            raise HTTPException(400, f"upload refused: {exc}") from exc
        part.replace(target)

    def commit(self, job: Job, upload_id: str, entries: list[FileEntry]) -> bool:
        """Move a verified upload into ``results/<job id>`` at once; False if results were
        committed already (by an earlier attempt): those stay, the upload is dropped."""
        staging = self.upload_folder(job, upload_id)
        self._check_upload(staging, entries)
        target = self.results_folder(job)
        with self._commit_lock:
            self._sweep_stale_uploads()
            if (target / MANIFEST).exists():
                shutil.rmtree(staging, ignore_errors=True)
                return False
            fsync_tree(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # a local attempt interrupted before its manifest: no results
                aside = staging.with_name(staging.name + ".replaced")
                target.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            staging.rename(target)
            fsync_dir(target.parent)
        log.info("job %s: results committed by a remote worker (%d files)", job.id, len(entries))
        return True

    def _check_upload(self, staging: Path, entries: list[FileEntry]) -> None:
        names = {e.name for e in entries}
        if MANIFEST not in names:
            raise HTTPException(400, f"a commit lists {MANIFEST}")
        try:
            for entry in entries:
                verify_file(staging / entry.name, entry)
            manifest = json.loads((staging / MANIFEST).read_text())
            missing = [u for u in manifest["outputs"] if f"{u}.dcm" not in names]
        except FileNotFoundError as exc:
            raise HTTPException(400, f"not uploaded: {Path(str(exc.filename)).name}") from exc
        except (ManifestError, ValueError, KeyError, TypeError) as exc:
            raise HTTPException(400, f"commit refused: {exc}") from exc
        if missing:
            raise HTTPException(400, f"commit refused: outputs not uploaded: {missing[:3]}")
        extra = {p.name for p in staging.iterdir()} - names
        if extra:
            raise HTTPException(400, f"commit refused: files not listed: {sorted(extra)[:3]}")

    def _sweep_stale_uploads(self) -> None:
        if not self.uploads.is_dir():
            return
        cutoff = time.time() - STALE_UPLOAD_SECONDS
        for folder in self.uploads.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    log.info("removed a stale remote upload %s", folder.name)


def _listing(entries: list[FileEntry]) -> dict[str, Any]:
    return {"files": [e.as_json() for e in entries]}


def add_study_api(app: FastAPI, settings: Settings, store: JobStore, spool: Spool) -> None:
    """Mount ``/remote/v1`` on the monitor's app."""
    api = StudyApi(settings, store, spool)
    router = APIRouter(prefix=PREFIX, tags=["remote workers"])
    Worker = Annotated[str, Depends(api.worker)]  # noqa: N806

    @router.get("/whoami")
    def whoami(worker: Worker) -> dict[str, str]:
        """The worker name of the token: a remote worker checks its token at start-up."""
        return {"worker": worker}

    @router.get("/jobs/{job_id}/study")
    def study(worker: Worker, job_id: str) -> dict[str, Any]:
        """The job's sealed study: every instance with its size and SHA-256."""
        job = api.active_job(job_id)
        listing = api.study_listing(job)
        log.info("job %s: study listed for remote worker %s", job.id, worker)
        return {"job_id": job.id, "study_uid": job.study_uid, **_listing(listing)}

    @router.get("/jobs/{job_id}/study/{series_uid}/{sop_file}")
    def study_file(_: Worker, job_id: str, series_uid: str, sop_file: str) -> FileResponse:
        """One instance as received (``Range`` requests resume a download)."""
        job = api.active_job(job_id)
        try:
            name = check_study_name(f"{validate_uid(series_uid, 'series')}/{sop_file}")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        path = api.study_folder(job) / name
        if not path.is_file():
            raise HTTPException(404, f"job {job.id}: no instance {name}")
        return FileResponse(path, media_type="application/dicom")

    @router.get("/jobs/{job_id}/results")
    def results(_: Worker, job_id: str) -> dict[str, Any]:
        """Results committed by an earlier attempt (404 when there are none)."""
        job = api.active_job(job_id)
        listing = api.results_listing(job)
        if listing is None:
            raise HTTPException(404, f"job {job.id}: no results committed")
        return _listing(listing)

    @router.get("/jobs/{job_id}/results/{name}")
    def result_file(_: Worker, job_id: str, name: str) -> FileResponse:
        job = api.active_job(job_id)
        try:
            check_result_name(name)
        except ManifestError as exc:
            raise HTTPException(400, str(exc)) from exc
        path = api.results_folder(job) / name
        if not path.is_file():
            raise HTTPException(404, f"job {job.id}: no results file {name}")
        return FileResponse(path)

    @router.put("/jobs/{job_id}/uploads/{upload_id}/{name}", status_code=204)
    async def upload(
        request: Request, _: Worker, job_id: str, upload_id: str, name: str, size: int, sha256: str
    ) -> None:
        """One results file; ``size`` and ``sha256`` announce it and are checked."""
        job = api.active_job(job_id)
        try:
            (entry,) = parse_entries(
                {"files": [{"name": name, "size": size, "sha256": sha256}]}, check_result_name
            )
        except ManifestError as exc:
            raise HTTPException(400, str(exc)) from exc
        if size > MAX_RESULT_FILE_BYTES:
            raise HTTPException(413, f"{name}: {size} bytes is over {MAX_RESULT_FILE_BYTES}")
        await api.receive(request, api.upload_folder(job, upload_id) / name, entry)

    @router.post("/jobs/{job_id}/uploads/{upload_id}/commit")
    async def commit(request: Request, worker: Worker, job_id: str, upload_id: str) -> Any:
        """Check every uploaded file again and make them the job's results in one rename.

        ``committed: false``: results were committed before; the worker delivers those.
        """
        job = api.active_job(job_id)
        try:
            entries = parse_entries(await request.json(), check_result_name)
        except (ManifestError, ValueError) as exc:
            raise HTTPException(400, f"commit refused: {exc}") from exc
        committed = await run_in_threadpool(api.commit, job, upload_id, entries)
        if not committed:
            log.info("job %s: results already committed; upload of %s dropped", job.id, worker)
        return {"committed": committed}

    @router.put("/jobs/{job_id}/timings", status_code=204)
    async def timings(request: Request, _: Worker, job_id: str) -> None:
        """Stage durations measured on the worker after the commit (delivery)."""
        job = api.active_job(job_id)
        try:
            data = await request.json()
            stages = {str(k): float(v) for k, v in data.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise HTTPException(400, "timings are {stage: seconds}") from exc
        folder = api.results_folder(job)
        if not (folder / MANIFEST).exists():
            raise HTTPException(409, f"job {job.id}: no results committed to add timings to")
        record_timings(folder, stages)

    app.include_router(router)
