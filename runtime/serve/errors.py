"""The service's own errors and the one mapping from a beautyrt error to an HTTP status and JSON body.

Torch-free and FastAPI-free: every ``BeautyrtError`` maps to exactly one status, and the body is
``{"error": {"code": <the CLI's exit code>, "kind": <class name>, "message": <its one line>}}``. Errors that
only a service can have (a missing token, an upload over the limit, a full queue, an unknown id) get their
own classes and exit codes (80..89), listed with the others in README's Errors bullet.
"""

from __future__ import annotations

from typing import Optional

from beautyrt.engines.errors import (
    BeautyrtError,
    BundleError,
    EngineInputError,
    EngineRuntimeError,
    MissingDependencyError,
    ProviderError,
    UsageError,
)

from ..errors import (
    Cancelled,
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    ImageTooSmallError,
    NoFaceError,
    OutputError,
)

INTERNAL_ERROR = 70  # the CLI's code for a bug


class Unauthorized(BeautyrtError):
    """A request without the bearer token, or with a wrong one (the server was started with --api-key-env)."""

    exit_code = 80


class UploadTooLarge(BeautyrtError):
    """The request body is over --max-upload-mb (refused before it is read whole)."""

    exit_code = 81


class Busy(BeautyrtError):
    """The work queue is full, or the server is not ready / shutting down: try again later (Retry-After)."""

    exit_code = 82

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(BeautyrtError):
    """An unknown (or no longer kept) job or result id."""

    exit_code = 83


class JobPending(BeautyrtError):
    """The job's result was asked for before the job finished."""

    exit_code = 84


class NotAcceptable(UsageError):
    """The Accept header names no format the service can answer with."""


class RequestTimeout(Cancelled):
    """The request ran past --timeout; its search was cancelled."""


def status_of(e: BaseException) -> int:
    """The HTTP status of an error (a bug, i.e. anything that is not a BeautyrtError, is 500)."""
    table: list[tuple[type, int]] = [
        (Unauthorized, 401),
        (UploadTooLarge, 413),
        (Busy, 503),
        (NotFound, 404),
        (JobPending, 409),
        (NotAcceptable, 406),
        (RequestTimeout, 504),
        (Cancelled, 503),  # shutdown, or a cancelled job
        (UsageError, 400),
        (ImageNotFoundError, 400),  # cannot happen over HTTP (no paths), but a bad parameter if it does
        (ImageDecodeError, 415),
        (ImageTooLargeError, 415),
        (ImageTooSmallError, 422),
        (NoFaceError, 422),
        (OutputError, 400),
        (BundleError, 503),
        (ProviderError, 503),
        (MissingDependencyError, 503),
        (EngineInputError, 500),
        (EngineRuntimeError, 500),
    ]
    for cls, status in table:
        if isinstance(e, cls):
            return status
    return 500


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:1000] or type(e).__name__


def error_body(e: BaseException) -> dict:
    if isinstance(e, BeautyrtError):
        code, kind, msg = e.exit_code, type(e).__name__, one_line(e)
    else:  # a bug: name it in one line, never a traceback
        code, kind, msg = INTERNAL_ERROR, "InternalError", f"internal error: {type(e).__name__}: {one_line(e)[:300]}"
    return {"error": {"code": code, "kind": kind, "message": msg}}


def error_headers(e: BaseException) -> dict[str, str]:
    h: dict[str, str] = {}
    if isinstance(e, UploadTooLarge):
        h["Connection"] = "close"  # the rest of the body is not read: end the connection, do not drain it
    if isinstance(e, Unauthorized):
        h["WWW-Authenticate"] = 'Bearer realm="beautyrt"'
    retry: Optional[float] = getattr(e, "retry_after", None)
    if isinstance(e, Busy) or (isinstance(e, Cancelled) and not isinstance(e, RequestTimeout)):
        h["Retry-After"] = str(max(1, int(round(retry if retry is not None else 1.0))))
    elif isinstance(e, (BundleError, ProviderError, MissingDependencyError)):
        h["Retry-After"] = "30"
    return h
