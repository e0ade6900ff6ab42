"""Server-side errors and the HTTP status each error maps to.

Every error reaches the client as a non-200 status with body ``{"error": "..."}`` (the KServe v2 error shape that
``tritonclient`` turns into an ``InferenceServerException``). Bad input is always a 4xx; only a bug is a 500.
"""

from __future__ import annotations

from ..errors import (
    ArtifactError,
    BackendError,
    ConfigError,
    EdgeslimError,
    InputError,
    UnknownNameError,
)


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


class ModelNotReadyError(EdgeslimError, RuntimeError):
    """The model exists but is not ready (loading or shutting down)."""


def http_status(exc: BaseException) -> int:
    """The HTTP status for an error: 4xx for anything the client caused, 5xx for the server's own state."""
    # Order matters: subclasses before their bases.
    for cls, status in (
        (ModelNotFoundError, 404),
        (UnauthorizedError, 401),
        (BodyTooLargeError, 413),
        (ServerBusyError, 503),
        (ModelNotReadyError, 503),
        (RequestTimeoutError, 504),
        (InputError, 400),
        (UnknownNameError, 400),
        (ConfigError, 400),
        (ArtifactError, 500),
        (BackendError, 500),
    ):
        if isinstance(exc, cls):
            return status
    return 500
