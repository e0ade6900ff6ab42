"""``create_app(settings)`` builds the FastAPI app; ``serve(settings)`` runs it under uvicorn.

The app loads its models in the lifespan (so ``/v2/health/ready`` turns 200 only once they are loaded) and, on
shutdown, lets the batchers finish every queued request before the backends are released. uvicorn itself stops
accepting connections on SIGINT/SIGTERM and waits up to ``graceful_timeout_s`` for in-flight requests.

A small ASGI guard in front of every route enforces the bearer token (except on ``/v2/health/*``) and the body
size limit before any handler reads the body; every error is ``{"error": "..."}`` with a 4xx for bad input.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ConfigError, EdgeslimError
from . import classify, health, infer, metrics, models
from .errors import BodyTooLargeError, ServerBusyError, UnauthorizedError, http_status
from .metrics import PowerReader, auto_power_reader, build_registry
from .repository import ModelRepository, find_artifacts
from .schemas import InferRequestBody
from .settings import ServerSettings

log = logging.getLogger("edgeslim.server")

_OPEN_PREFIXES = ("/v2/health/",)


def _error_body(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Guard:
    """ASGI middleware: bearer token and body-size limit, checked before a handler runs or reads the body."""

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None and not scope["path"].startswith(_OPEN_PREFIXES):
            auth = headers.get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            # compare_digest: the time taken must not reveal how much of the token matched.
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.token):
                why = "missing" if not auth else "wrong"
                resp = _error_body(
                    401,
                    f"{why} bearer token: send the header 'Authorization: Bearer <token>' set when the server started",
                    {"WWW-Authenticate": "Bearer"},
                )
                return await resp(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _error_body(400, f"Content-Length {length[:40]!r} is not an integer")(scope, receive, send)
            if n > self.max_body_bytes:
                resp = _error_body(
                    413, f"request body of {n} bytes exceeds the server limit of {self.max_body_bytes} bytes"
                )
                return await resp(scope, receive, send)
        limit = self.max_body_bytes
        seen = 0

        async def limited_receive() -> dict:
            # Chunked bodies have no Content-Length: count as they stream in and stop at the limit.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(f"request body exceeds the server limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeslimError)
    async def edgeslim_error(request: Request, exc: EdgeslimError) -> JSONResponse:
        status = http_status(exc)
        headers = {}
        if isinstance(exc, ServerBusyError):
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        if status >= 500 and status not in (503, 504):
            log.error("internal error on %s: %s", request.url.path, exc, exc_info=exc)
        return _error_body(status, str(exc), headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_body(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return _error_body(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error_body(500, f"internal server error ({type(exc).__name__}); see the server log")


def _openapi(app: FastAPI) -> Any:
    from fastapi.openapi.utils import get_openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            body = InferRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(body.pop("$defs", {}))
            comps["InferRequestBody"] = body
            if app.state.settings.token:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, ops in schema["paths"].items():
                    if not path.startswith(_OPEN_PREFIXES):
                        for op in ops.values():
                            op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def create_app(settings: ServerSettings, *, power_reader: PowerReader | str | None = "auto") -> FastAPI:
    """Build the server app for ``settings``; models load when the app starts (its lifespan).

    Args:
        settings: what to serve and how.
        power_reader: callable returning watts per rail, exported as ``edgeslim_power_watts{rail=...}`` on
            ``/metrics``. ``"auto"`` (default) uses the host's best reader from :mod:`edgeslim.devices.power`
            (tegrastats, NVML, RAPL; mean watts between scrapes) and no gauge when none is readable; None disables.

    Raises:
        ConfigError: a model path is neither an artifact nor a directory of artifacts.
    """
    find_artifacts(settings.models)  # fail fast, before uvicorn starts, on a wrong path
    repository = ModelRepository(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(repository.load)  # loading is blocking I/O + compilation
        except BaseException as exc:
            app.state.startup_error = exc
            raise
        repository.start()
        log.info("serving %s on %s", ", ".join(sorted(repository.models)), settings.backend)
        try:
            yield
        finally:
            await repository.close()

    app = FastAPI(
        title="edgeslim inference server",
        version=__version__,
        description="KServe v2 / Open Inference Protocol (binary tensors, classification, model configuration, "
        "statistics) plus an image classification endpoint. Errors are `{\"error\": \"...\"}`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.repository = repository
    if power_reader == "auto":
        power_reader = auto_power_reader()
    elif isinstance(power_reader, str):
        raise ConfigError(f"power_reader must be 'auto', None or a callable, got {power_reader!r}")
    app.state.metrics_registry = build_registry(repository, power_reader)
    app.state.startup_error = None
    for module in (health, models, infer, classify, metrics):
        app.include_router(module.router)
    _install_error_handlers(app)
    app.add_middleware(_Guard, token=settings.token, max_body_bytes=settings.max_body_bytes)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def serve(settings: ServerSettings, *, power_reader: PowerReader | str | None = "auto") -> None:
    """Run the server until SIGINT/SIGTERM, then finish in-flight requests and exit.

    Raises:
        EdgeslimError: the models could not be loaded (the lifespan's error, re-raised so the CLI can print it).
    """
    import uvicorn

    app = create_app(settings, power_reader=power_reader)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        server_header=False,
        proxy_headers=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started and app.state.startup_error is not None:
        raise app.state.startup_error
