"""A remote worker's side of the study API (``worker/monitor/study_api.py``).

A worker with ``worker.central_url`` set has no access to the central node's disk. For each
job it claims, it:

1. drops what an earlier attempt left on this machine (the central copy is the truth);
2. downloads results an earlier attempt committed, if any, and delivers those;
3. otherwise downloads the sealed study into ``data_dir/remote/studies/<job>.partial``,
   each file verified against its announced size and SHA-256 (a broken or interrupted file
   resumes with ``Range``, a corrupt one is fetched again), then renames the folder to
   ``<job>``: the pipelines never see a partial study;
4. after the pipelines, uploads the results folder and commits it on the central node;
5. removes its local copies (``data_dir/remote/``) when the job ends, whatever the outcome.

Every request is retried with exponential back-off (``worker.transfer_attempts``,
``worker.transfer_backoff_seconds``) on network errors, 5xx answers and corrupt data;
after the last attempt :class:`TransferError` is raised and the task queues the job again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from worker.config import Settings, SettingsError
from worker.run.manifest import (
    FileEntry,
    ManifestError,
    check_result_name,
    check_study_name,
    describe,
    fsync_tree,
    parse_entries,
    sha256_file,
    verify_file,
)
from worker.run.results import MANIFEST

log = logging.getLogger(__name__)

API = "/remote/v1"
_CHUNK = 1 << 20
_MAX_BACKOFF_SECONDS = 60.0
T = TypeVar("T")


class TransferError(Exception):
    """The central node could not be reached or answered wrongly after every attempt."""


class _RetryableError(Exception):
    """One attempt failed in a way another attempt may not (network, 5xx, corrupt data)."""


class CentralClient:
    """Downloads studies and results from, and commits results to, the central node."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        config = settings.worker
        if not config.central_url or config.central_token_file is None:
            raise SettingsError("a remote worker needs worker.central_url and central_token_file")
        token = config.central_token_file.read_text().strip()
        if not token:
            raise SettingsError(f"worker.central_token_file {config.central_token_file} is empty")
        self.attempts = config.transfer_attempts
        self.backoff = config.transfer_backoff_seconds
        self._sleep = sleep
        self.studies = settings.data_dir / "remote" / "studies"
        self.results_dir = settings.data_dir / "remote" / "results"
        verify: ssl.SSLContext | bool = True
        if config.central_ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.central_ca_file))
        self._http = httpx.Client(
            base_url=config.central_url + API,
            headers={"Authorization": f"Bearer {token}"},
            timeout=config.transfer_timeout_seconds,
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- the steps of a job ----------------------------------------------------------------

    def whoami(self) -> str:
        """The worker name the central node knows this token by; SettingsError if refused."""
        try:
            answer = self._request("GET", "/whoami", what="token check")
        except _RefusedError as exc:
            raise SettingsError(f"the central node refused this worker: {exc}") from exc
        return str(answer.json()["worker"])

    def fetch_study(self, job_id: str) -> list[Path]:
        """The job's instances on this machine, complete and verified (sorted paths)."""
        final = self.studies / job_id
        staging = self.studies / f"{job_id}.partial"
        listing = self._listing(f"/jobs/{job_id}/study", check_study_name, f"job {job_id} study")
        if final.is_dir():  # renamed by an attempt that died before the pipelines finished
            shutil.rmtree(final)
        for entry in listing:
            url = f"/jobs/{quote(job_id)}/study/{entry.name}"
            self._with_retries(
                f"job {job_id}: {entry.name}",
                lambda e=entry, u=url: self._download(u, staging / e.name, e),  # type: ignore[misc]
            )
        staging.mkdir(parents=True, exist_ok=True)  # an empty study still gets its folder
        fsync_tree(staging)
        staging.rename(final)
        log.info("job %s: %d instances fetched from the central node", job_id, len(listing))
        return sorted(final.glob("*/*.dcm"))

    def fetch_results(self, job_id: str, folder: Path) -> bool:
        """Results an earlier attempt committed, into ``folder``; False if there are none."""
        try:
            listing = self._listing(f"/jobs/{job_id}/results", check_result_name, "results")
        except _NotFoundError:
            return False
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for entry in listing:
            url = f"/jobs/{quote(job_id)}/results/{entry.name}"
            self._with_retries(
                f"job {job_id}: results {entry.name}",
                lambda e=entry, u=url: self._download(u, staging / e.name, e),  # type: ignore[misc]
            )
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        log.info("job %s: results committed by an earlier attempt fetched", job_id)
        return True

    def commit_results(self, job_id: str, folder: Path) -> bool:
        """Upload ``folder`` and commit it; False if other results were committed first."""
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
        entries = describe(folder, [*names, MANIFEST])
        upload = f"/jobs/{quote(job_id)}/uploads/{secrets.token_hex(16)}"
        for entry in entries:
            self._with_retries(
                f"job {job_id}: upload {entry.name}",
                lambda e=entry: self._upload(f"{upload}/{e.name}", folder / e.name, e),  # type: ignore[misc]
            )
        body = {"files": [e.as_json() for e in entries]}
        answer = self._request("POST", f"{upload}/commit", what=f"job {job_id} commit", json=body)
        return bool(answer.json()["committed"])

    def push_timings(self, job_id: str, timings: dict[str, float]) -> None:
        """Add the stages measured after the commit (delivery); never fails the job."""
        try:
            self._request("PUT", f"/jobs/{quote(job_id)}/timings", what="timings", json=timings)
        except TransferError as exc:  # refused (4xx) included
            log.warning("job %s: timings not recorded on the central node: %s", job_id, exc)

    def discard(self, job_id: str) -> None:
        """Remove this machine's copies of the job's study and results."""
        for path in (
            self.studies / job_id,
            self.studies / f"{job_id}.partial",
            self.results_dir / job_id,
            self.results_dir / f"{job_id}.partial",
        ):
            shutil.rmtree(path, ignore_errors=True)

    def sweep(self, older_than_seconds: float) -> int:
        """Remove copies left by attempts killed long ago (a live job's are newer)."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for parent in (self.studies, self.results_dir):
            if not parent.is_dir():
                continue
            for path in parent.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        shutil.rmtree(path, ignore_errors=True)
                        removed += 1
        return removed

    # -- transfers -------------------------------------------------------------------------

    def _listing(self, path: str, check_name: Any, what: str) -> list[FileEntry]:
        answer = self._request("GET", path, what=what)
        try:
            return parse_entries(answer.json(), check_name)
        except (ManifestError, ValueError) as exc:
            raise TransferError(f"{what}: the central node sent a bad listing: {exc}") from exc

    def _download(self, url: str, target: Path, entry: FileEntry) -> None:
        """Fetch one file into ``target``, resuming a partial one; verified before renamed."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have >= entry.size:
            part.unlink(missing_ok=True)
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._http.stream("GET", url, headers=headers) as answer:
            if answer.status_code == 206 and have:
                mode = "ab"
            elif answer.status_code == 200:
                mode = "wb"
            else:
                answer.read()
                _raise_for(answer, url)
                raise _RetryableError(f"unexpected answer {answer.status_code}")
            with part.open(mode) as fh:
                for chunk in answer.iter_bytes():  # as received: a cut keeps its part
                    self.write_chunk(fh, chunk)
                fh.flush()
                os.fsync(fh.fileno())
        try:
            verify_file(part, entry)
        except ManifestError as exc:
            part.unlink(missing_ok=True)  # fetched again from the start by the next attempt
            raise _RetryableError(f"corrupt download: {exc}") from exc
        part.replace(target)

    def write_chunk(self, fh: Any, chunk: bytes) -> None:
        """Write downloaded bytes (a seam: tests slow it down to kill a worker mid-transfer)."""
        fh.write(chunk)

    def _upload(self, url: str, path: Path, entry: FileEntry) -> None:
        if sha256_file(path) != entry.sha256:
            raise TransferError(f"{path} changed while it was being uploaded")
        params = {"size": str(entry.size), "sha256": entry.sha256}
        with path.open("rb") as fh:
            answer = self._http.put(url, params=params, content=_chunks(fh))
        if answer.status_code == 400:  # the bytes arrived damaged: send them again
            raise _RetryableError(f"upload of {entry.name} refused: {_detail(answer)}")
        _raise_for(answer, url)

    def _request(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        def once() -> httpx.Response:
            answer = self._http.request(method, path, **kwargs)
            _raise_for(answer, path)
            return answer

        return self._with_retries(what, once)

    def _with_retries(self, what: str, attempt: Callable[[], T]) -> T:
        for n in range(self.attempts):
            try:
                return attempt()
            except (httpx.TransportError, _RetryableError) as exc:
                if n + 1 >= self.attempts:
                    raise TransferError(
                        f"{what}: the central node failed {self.attempts} times; last: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                delay = min(self.backoff * 2**n, _MAX_BACKOFF_SECONDS)
                log.warning("%s: %s; attempt %d again in %.1f s", what, exc, n + 2, delay)
                self._sleep(delay)
        raise AssertionError("not reached")


def check_central(settings: Settings) -> None:
    """At a remote worker's start: its token is accepted (SettingsError if refused); an
    unreachable central node is only logged, its jobs wait and retry."""
    client = CentralClient(settings)
    try:
        name = client.whoami()
    except TransferError as exc:
        log.warning("central node %s not reachable now: %s", settings.worker.central_url, exc)
        return
    finally:
        client.close()
    log.info("central node %s knows this worker as %s", settings.worker.central_url, name)


class _RefusedError(TransferError):
    """4xx: the request itself is wrong or not allowed (bad token, job not running)."""


class _NotFoundError(_RefusedError):
    pass


def _raise_for(answer: httpx.Response, url: str) -> None:
    if answer.is_success:
        return
    detail = _detail(answer)
    if answer.status_code >= 500 or answer.status_code in (408, 429):
        raise _RetryableError(f"{answer.status_code} for {url}: {detail}")
    if answer.status_code == 404:
        raise _NotFoundError(f"{url}: {detail}")
    raise _RefusedError(f"the central node refused {url} ({answer.status_code}): {detail}")


def _detail(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("detail", ""))[:300]
    except (ValueError, AttributeError):
        return answer.text[:300]


def _chunks(fh: Any) -> Iterator[bytes]:
    while chunk := fh.read(_CHUNK):
        yield chunk
