"""Server-side errors and the HTTP status each error maps to.

Every error reaches the client as a non-200 status with body ``{"error": "..."}`` (the KServe v2 error shape that
``tritonclient`` turns into an ``InferenceServerException``). Bad input is always a 4xx; only a bug is a 500.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import (
    ArtifactError,
    BackendError,
    ConfigError,
    EdgeslimError,
    InputError,
    UnknownNameError,
)

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

log = logging.getLogger("edgeslim.server")


class ModelNotFoundError(UnknownNameError):
    """The request names a model (or version) this server does not serve."""


class UnauthorizedError(EdgeslimError, PermissionError):
    """The bearer token is missing or wrong."""


class BodyTooLargeError(InputError):
    """The request body (or its decompressed form) exceeds ``ServerSettings.max_body_bytes``."""


class ServerBusyError(EdgeslimError, RuntimeError):
    """The model's request queue is full, or the server is shutting down; retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeoutError(EdgeslimError, TimeoutError):
    """A request was not answered within its timeout (queue wait + compute)."""


class ModelControlError(EdgeslimError, PermissionError):
    """A load or unload request: the served models are fixed at start (Triton's model control mode NONE)."""


class ModelNotReadyError(EdgeslimError, RuntimeError):
    """The model exists but is not ready (loading or shutting down)."""


class RequestIdNotFoundError(InputError):
    """Feedback names a request id that no answered request of the model carries."""


class RequestIdGoneError(InputError):
    """Feedback names a request that was answered but has left the bounded feedback ring."""


class DuplicateFeedbackError(InputError):
    """Feedback for a request that already has feedback."""


class NoFieldReferenceError(InputError):
    """Feedback for a model file exported without a val reference: no validated recall to test live counts against."""


def http_status(exc: BaseException) -> int:
    """The HTTP status for an error: 4xx for anything the client caused, 5xx for the server's own state."""
    # Order matters: subclasses before their bases.
    for cls, status in (
        (ModelControlError, 403),
        (ModelNotFoundError, 404),
        (UnauthorizedError, 401),
        (BodyTooLargeError, 413),
        (ServerBusyError, 503),
        (ModelNotReadyError, 503),
        (RequestTimeoutError, 504),
        (RequestIdNotFoundError, 404),
        (RequestIdGoneError, 410),
        (DuplicateFeedbackError, 409),
        (NoFieldReferenceError, 422),
        (InputError, 400),
        (UnknownNameError, 400),
        (ConfigError, 400),
        (ArtifactError, 500),
        (BackendError, 500),
    ):
        if isinstance(exc, cls):
            return status
    return 500


def validation_message(errors: list[dict]) -> str:
    """Pydantic's validation errors as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> "JSONResponse":
    """The ``{"error": message}`` answer with ``status``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def error_response(exc: BaseException, path: str) -> "JSONResponse":
    """The JSON answer for an exception raised while handling a request on ``path``.

    Edgeslim errors get their status from :func:`http_status` (plus ``Retry-After`` on 503s for a full queue and
    ``WWW-Authenticate`` on 401s); anything else is a bug: a 500 that points at the server log, where it is logged.
    """
    if not isinstance(exc, EdgeslimError):
        log.error("unhandled error on %s", path, exc_info=exc)
        return json_error(500, f"internal server error ({type(exc).__name__}); see the server log")
    status = http_status(exc)
    headers = {}
    if isinstance(exc, ServerBusyError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500 and status not in (503, 504):
        log.error("internal error on %s: %s", path, exc, exc_info=exc)
    return json_error(status, str(exc), headers)
