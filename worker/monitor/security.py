"""Browser-facing defences of the monitor: same-origin checks and security headers.

SameSite cookies do not separate ports (a page of Orthanc Explorer or Flower on the same host
is "same site"), so every state-changing request that rides on the session cookie must come
from one of our own pages: its ``Origin`` (or, without one, its ``Referer``) must name this
very host and port. Bearer-token clients send no ambient credentials and are not checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Everything the pages (Swagger UI included) load comes from the monitor itself; nothing
#: may frame it.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class CrossSiteRequestError(Exception):
    """A cookie-authenticated change came from a page that is not ours: answered with 403."""


def same_origin(request: Request, trusted: Iterable[str] = ()) -> bool:
    """Whether the request's Origin, else its Referer, is this host:port (or a trusted origin).

    A request with neither is refused: browsers send Origin with every POST, so only a page
    that hides where it comes from lacks both.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    if parts.netloc and parts.netloc == request.headers.get("host"):
        return True
    return f"{parts.scheme}://{parts.netloc}" in set(trusted)


def add_security_headers(app: FastAPI) -> None:
    """CSP, X-Frame-Options, nosniff and a same-origin referrer on every response."""

    @app.middleware("http")
    async def _headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response
