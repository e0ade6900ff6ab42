"""``create_app(settings)`` builds the FastAPI app; ``serve(settings)`` runs it under uvicorn.

The app loads its models in the lifespan (so ``/v2/health/ready`` turns 200 only once they are loaded) and, on
shutdown, lets the batchers finish every queued request before the backends are released. uvicorn itself stops
accepting connections on SIGINT/SIGTERM and waits up to ``graceful_timeout_s`` for in-flight requests.

A small ASGI guard (:mod:`~edgeslim.server.guard`) in front of every route enforces the bearer token (except on
``/v2/health/*``) and the body size limit before any handler reads the body; every error is ``{"error": "..."}`` with
a 4xx for bad input. ``POST .../infer`` takes a pure ASGI fast path (:class:`~edgeslim.server.infer.InferEndpoint`)
ahead of FastAPI's middleware and router, with the same guard, checks, statistics and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import ConfigError, EdgeslimError
from . import classify, device, feedback, health, infer, metrics, model_repository, models, sharedmem
from .errors import error_response, json_error, validation_message
from .guard import OPEN_PREFIXES, Guard, GuardMiddleware
from .infer import InferEndpoint
from .metrics import PowerReader, auto_power_reader, build_registry
from .monitor import MonitorCollector
from .repository import ModelRepository, find_artifacts
from .schemas import InferRequestBody
from .settings import ServerSettings

log = logging.getLogger("edgeslim.server")


class BusyPoller:
    """Keeps the event loop polling its sockets for ``seconds`` after the last HTTP request ends
    (``ServerSettings.busy_poll_us``): each round yields to the loop, which then polls with a zero timeout, so a
    request that arrives meanwhile is read by a CPU that never went idle. Stops as soon as a request is in flight
    (its end starts the window again) or the window is over."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = 0
        self._deadline = 0.0
        self._task: asyncio.Task | None = None

    def enter(self) -> None:
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        if not self.active:
            self._deadline = time.perf_counter() + self.seconds
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        try:
            while not self.active and time.perf_counter() < self._deadline:
                await asyncio.sleep(0)
        finally:
            self._task = None


class _ServerApp(FastAPI):
    """FastAPI with a pure ASGI fast path for ``POST .../infer`` (see :class:`~edgeslim.server.infer.InferEndpoint`).

    Every other request, and an inference request whose path the fast path does not recognise, goes through
    FastAPI's middleware, routing and exception handlers as usual.
    """

    fast_infer: InferEndpoint | None = None
    poller: BusyPoller | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        poller = self.poller
        if poller is None or scope["type"] != "http":
            return await self._dispatch(scope, receive, send)
        poller.enter()
        try:
            await self._dispatch(scope, receive, send)
        finally:
            poller.leave()

    async def _dispatch(self, scope: dict, receive: Any, send: Any) -> None:
        fast = self.fast_infer
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            route = fast.match(scope)
            if route is not None:
                scope["app"] = self
                return await fast(scope, receive, send, *route)
        await super().__call__(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EdgeslimError)
    async def edgeslim_error(request: Request, exc: EdgeslimError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return json_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return json_error(400, "invalid request: " + validation_message(exc.errors()))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, request.url.path)


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
                    if not path.startswith(OPEN_PREFIXES):
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
        if not repository.loaded:  # serve() loads before uvicorn starts; an app run some other way loads here
            try:
                await run_in_threadpool(repository.load)  # loading is blocking I/O + compilation
            except BaseException as exc:
                app.state.startup_error = exc
                raise
        repository.start()
        grpc_server = None
        if settings.grpc_port:  # gRPC on the same loop, models and batchers (imported only when asked for)
            from .grpc_service import start_grpc_server

            try:
                grpc_server = await start_grpc_server(repository, settings, app.fast_infer)
            except BaseException as exc:
                app.state.startup_error = exc
                await repository.close()
                raise
        log.info("serving %s", ", ".join(f"{n} on {m.backend.name}" for n, m in sorted(repository.models.items())))
        try:
            yield
        finally:
            if grpc_server is not None:  # no new gRPC calls; those in flight finish before the batchers close
                await grpc_server.stop(settings.graceful_timeout_s)
            await repository.close()
            if app.state.shared_memory is not None:
                app.state.shared_memory.unregister()

    app = _ServerApp(
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
    app.state.metrics_registry.register(MonitorCollector(repository))  # feedback and drift, per model
    app.state.startup_error = None
    app.state.shared_memory = sharedmem.SharedMemoryRegistry() if settings.shared_memory else None
    for module in (health, models, model_repository, device, infer, feedback, classify, metrics, sharedmem):
        app.include_router(module.router)
    _install_error_handlers(app)
    guard = Guard(token=settings.token, max_body_bytes=settings.max_body_bytes,
                  max_upload_bytes=settings.max_upload_bytes if settings.model_control == "explicit" else None)
    app.add_middleware(GuardMiddleware, guard=guard)
    app.fast_infer = InferEndpoint(repository, settings, guard, app.state.shared_memory)
    app.poller = BusyPoller(settings.busy_poll_us / 1e6) if settings.busy_poll_us else None
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _http_impl(app: _ServerApp) -> Any:
    """httptools (C) when installed, with inference bodies received in one piece
    (:class:`~edgeslim.server.http_protocol.InferHttpProtocol`): h11's pure-Python parsing costs several hundred
    microseconds per request."""
    import importlib.util

    if importlib.util.find_spec("httptools") is not None:
        from .http_protocol import InferHttpProtocol

        return functools.partial(InferHttpProtocol, endpoint=app.fast_infer)
    log.warning("httptools is not installed: HTTP is parsed by h11, slower per request; install 'uvicorn[standard]'")
    return "h11"


def _loop_impl() -> str:
    """uvloop when installed (not on Windows), else asyncio."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def serve(settings: ServerSettings, *, power_reader: PowerReader | str | None = "auto") -> None:
    """Run the server until SIGINT/SIGTERM, then finish in-flight requests and exit.

    The models load before uvicorn starts, as Triton loads its models before it opens its endpoints: a model that
    cannot load (a file that fails its sha256 check, a wrong backend) raises here, for the CLI to print as one
    line, instead of surfacing as uvicorn's lifespan traceback and exit code 3. The work is the same as loading in
    the lifespan, so the start is no slower.

    Raises:
        EdgeslimError: the models could not be loaded.
    """
    import uvicorn

    app = create_app(settings, power_reader=power_reader)
    repository: ModelRepository = app.state.repository
    try:
        repository.load()
        if settings.grpc_port:  # a taken gRPC port: the CLI's one line, not uvicorn's lifespan traceback
            from .grpc_service import check_grpc_port

            check_grpc_port(settings)
    except BaseException:
        repository.release()
        raise
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=_http_impl(app),
        loop=_loop_impl(),
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
