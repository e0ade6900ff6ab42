"""gRPC: the Open Inference Protocol's ``inference.GRPCInferenceService``, beside REST in the same process.

The KServe v2 / Triton gRPC protocol (``grpc_service.proto``): health, server and model metadata, ``ModelInfer`` with
``raw_input_contents`` or typed ``InferTensorContents`` (and ``ModelStreamInfer``), model configuration, statistics,
the repository index and, under explicit model control, load / unload. The messages, the service descriptor and the
servicer base class are the code generated from Triton's published proto that ``tritonclient[grpc]`` ships
(``tritonclient.grpc.service_pb2``, ``service_pb2_grpc``, ``model_config_pb2``); nothing here hand-writes protobuf.
The handlers are registered from that descriptor (:func:`add_service`) rather than by the generated
``add_GRPCInferenceServiceServicer_to_server`` only so that a request whose bytes do not parse is answered
``INVALID_ARGUMENT`` (the generated registration lets gRPC answer ``UNKNOWN``).

It runs on the REST server's event loop (``grpc.aio``), started by the app's lifespan once the models' batchers run,
and serves the same :class:`~edgeslim.server.repository.ModelRepository`: the same model objects, batcher, queue,
statistics and request checks (:func:`~edgeslim.server.infer.run_request`), so a request answers alike over either
protocol. Limits follow REST's: the largest message is the REST body limit (the upload limit too under explicit
model control, where only load requests may use it), the bearer token is the ``authorization: Bearer ...``
metadata entry (health needs none, as ``/v2/health/*``), and it binds the REST server's host.

Errors are gRPC status codes with the message REST would send: bad input ``INVALID_ARGUMENT``, an unknown model or
version ``NOT_FOUND``, a missing or wrong token ``UNAUTHENTICATED``, a message over the limit or a full queue
``RESOURCE_EXHAUSTED``, model control off ``PERMISSION_DENIED``, a model not ready ``UNAVAILABLE``, a timeout
``DEADLINE_EXCEEDED``; only a bug is ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import socket
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np

from .._version import __version__
from ..errors import ConfigError, EdgeslimError, InputError, require
from .errors import BodyTooLargeError, ModelNotFoundError, ModelNotReadyError, ServerBusyError, http_status
from .health import server_ready
from .infer import run_request
from .model_repository import _load_options, _refuse
from .models import EXTENSIONS
from .protocol import MAX_RANK, InferRequest, RequestedOutput, _raw_tensor, numpy_dtype, tensor_bytes, v2_datatype
from .settings import MODEL_NAME_RE, ServerSettings

grpc = require("grpc", extra="serve", purpose="the gRPC endpoint (edgeslim serve --grpc-port; 0 turns it off)")
require("tritonclient.grpc", extra="serve", purpose="the gRPC endpoint's generated protocol code")
from google.protobuf import json_format, message_factory  # noqa: E402 - after the require that names the extra
from google.protobuf.message import DecodeError  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402

log = logging.getLogger("edgeslim.server")

#: Methods that never need the token (REST's ``/v2/health/*``).
_OPEN = {f"/inference.GRPCInferenceService/{m}" for m in ("ServerLive", "ServerReady")}
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"

#: The extensions served over gRPC: REST's, less ``edgeslim_device`` (a REST route) and system shared memory.
GRPC_EXTENSIONS = [e for e in EXTENSIONS if e != "edgeslim_device"]

#: gRPC's own ceiling on a message (a signed 32-bit length).
_GRPC_MAX_MESSAGE = 2**31 - 1

#: The typed contents field of each v2 datatype, and the numpy dtype protobuf stores it in (FP16: raw only).
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_), "INT8": ("int_contents", np.int32), "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32), "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32), "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32), "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64), "BYTES": ("bytes_contents", None),
}
_SHM_OFF = ("shared memory is not served over gRPC; send the tensor in raw_input_contents, or use REST with"
            " `edgeslim serve --shared-memory`")


def grpc_status(exc: BaseException) -> Any:
    """The gRPC status code of an error: the code of REST's HTTP status (a full queue is RESOURCE_EXHAUSTED)."""
    if isinstance(exc, ServerBusyError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if not isinstance(exc, EdgeslimError):
        return grpc.StatusCode.INTERNAL
    status = http_status(exc)
    code = {
        400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.ALREADY_EXISTS,
        410: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }.get(status)
    if code is None:  # any other client error is still the client's
        code = grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL
    return code


def _error_message(exc: BaseException, method: str) -> str:
    """What the client reads for ``exc``, as REST's ``{"error": ...}`` says it; a server fault is logged."""
    status = http_status(exc) if isinstance(exc, EdgeslimError) else 500
    if status >= 500 and status not in (503, 504):
        log.error("internal error on gRPC %s: %s", method, exc, exc_info=exc)
    if not isinstance(exc, EdgeslimError):
        return f"internal server error ({type(exc).__name__}); see the server log"
    return str(exc)


class _Undecodable:
    """A request whose bytes are not the method's message: answered INVALID_ARGUMENT by the method, where a
    deserializer that raised would make gRPC answer UNKNOWN."""

    def __init__(self, message: str, exc: Exception) -> None:
        self.error = InputError(f"the request is not a valid {message} message ({exc})")


def _lenient(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Undecodable(cls.DESCRIPTOR.full_name, exc)

    return parse


def _checked(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    return request


def _rpc(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A unary method whose errors become the status :func:`grpc_status` gives them, never an unhandled crash."""

    @functools.wraps(fn)
    async def method(self: Any, request: Any, context: Any) -> Any:
        try:
            return await fn(self, _checked(request), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, as REST's handlers make a JSON error
            await context.abort(grpc_status(exc), _error_message(exc, fn.__name__))

    return method


# -- requests -----------------------------------------------------------------------------------------------------
def _param(p: Any, where: str, kinds: tuple[str, ...]) -> Any:
    kind = p.WhichOneof("parameter_choice")
    if kind not in kinds:
        raise InputError(f"{where} must be set as {' or '.join(kinds)}, got {kind or 'nothing'}")
    return getattr(p, kind)


def _typed_tensor(contents: Any, datatype: str, dt: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A tensor from typed ``InferTensorContents``: the one field the datatype uses, with exactly the elements the
    shape needs, each within the datatype's range."""
    if datatype not in _CONTENTS:
        raise InputError(f"{where}: {datatype} has no typed contents field; send it in raw_input_contents")
    field, stored = _CONTENTS[datatype]
    others = sorted(f.name for f, _ in contents.ListFields() if f.name != field)
    if others:
        raise InputError(f"{where}: a {datatype} tensor takes contents.{field}, got {', '.join(others)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InputError(f"{where}: contents.{field} has {len(values)} elements but shape {list(shape)} needs {count}")
    if stored is None:  # BYTES
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wide = np.array(values, dtype=stored)
    if dt.kind in "iu" and dt.itemsize < wide.dtype.itemsize and wide.size:
        info = np.iinfo(dt)
        if wide.min() < info.min or wide.max() > info.max:
            raise InputError(f"{where}: values out of range for {datatype}")
    return wide.astype(dt, copy=False).reshape(shape)


def parse_grpc_request(request: Any) -> InferRequest:
    """A ``ModelInferRequest`` as the server's :class:`~edgeslim.server.protocol.InferRequest`, checked as REST
    checks its JSON: one tensor source per input (``raw_input_contents`` for every input, in order, or typed
    ``contents``), byte counts and element counts that match the shape, known datatypes, no duplicate names.

    Raises:
        InputError: with a message naming the bad field.
    """
    timeout_us = None
    for key, p in request.parameters.items():
        if key == "timeout":
            timeout_us = _param(p, "parameters.timeout (microseconds)", ("int64_param", "uint64_param"))
            if timeout_us < 0:
                raise InputError(f"parameters.timeout must be a non-negative integer (microseconds), got {timeout_us}")
        elif key in ("sequence_id", "priority") and p.WhichOneof("parameter_choice") is not None:
            if getattr(p, p.WhichOneof("parameter_choice")) not in (0, "", False):
                raise InputError(f"parameters.{key} is not supported by this server; remove it")
        elif key.startswith("shared_memory"):
            raise InputError(f"parameters.{key[:40]}: {_SHM_OFF}")
    if not request.inputs:
        raise InputError("'inputs' must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input, in the"
            " order of 'inputs' (or typed contents for every input)"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if not t.name:
            raise InputError(f"inputs[{i}] has no name")
        where = f"input '{t.name[:80]}'"
        if t.name in inputs:
            raise InputError(f"{where} appears twice")
        dt = numpy_dtype(t.datatype)
        shape = tuple(t.shape)
        if any(d < 0 for d in shape):
            raise InputError(f"{where}: 'shape' must be non-negative integers, got {list(shape)}")
        if len(shape) > MAX_RANK:
            raise InputError(f"{where}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
        if any(k.startswith("shared_memory") for k in t.parameters):
            raise InputError(f"{where}: {_SHM_OFF}")
        typed = t.HasField("contents")
        if raw:
            if typed:
                raise InputError(f"{where} has both typed contents and raw_input_contents[{i}]; send one")
            arr = _raw_tensor(raw[i], t.datatype, dt, shape, t.name, where, f"raw_input_contents[{i}]")
        elif typed:
            arr = _typed_tensor(t.contents, t.datatype, dt, shape, where)
        else:
            raise InputError(f"{where} has neither typed contents nor raw_input_contents")
        inputs[t.name] = arr
    requested: list[RequestedOutput] | None = None
    if request.outputs:
        requested = []
        for j, o in enumerate(request.outputs):
            if not o.name:
                raise InputError(f"outputs[{j}] has no name")
            k = 0
            for key, p in o.parameters.items():
                if key == "classification":
                    k = _param(p, f"output '{o.name[:80]}': parameters.classification", ("int64_param",
                                                                                         "uint64_param"))
                    if k < 0:
                        raise InputError(f"output '{o.name[:80]}': classification must be >= 0, got {k}")
                elif key.startswith("shared_memory"):
                    raise InputError(f"output '{o.name[:80]}': {_SHM_OFF}")
            requested.append(RequestedOutput(o.name, True, int(k)))
    return InferRequest(request.id or None, inputs, requested, True, timeout_us)


def encode_grpc_response(model: Any, request_id: str | None, outputs: list[tuple[str, np.ndarray, Any]]) -> Any:
    """Outputs as a ``ModelInferResponse``, every tensor in ``raw_output_contents`` (as Triton answers)."""
    response = service_pb2.ModelInferResponse(model_name=model.name, model_version=model.version,
                                              id=request_id or "")
    for name, arr, _ in outputs:
        response.outputs.add(name=name, datatype=v2_datatype(arr.dtype), shape=arr.shape)
        response.raw_output_contents.append(tensor_bytes(arr))
    return response


# -- the service --------------------------------------------------------------------------------------------------
class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over a :class:`~edgeslim.server.repository.ModelRepository`.

    Args:
        in_flight: the REST inference endpoint (:class:`~edgeslim.server.infer.InferEndpoint`), whose count of
            requests in flight both protocols share: a request runs inline in the event loop only when it is the
            only one in the server (:mod:`edgeslim.server.batcher`).
        check_size: the server's message limit is above the inference limit (explicit model control lets load
            requests be larger): check each inference request against ``max_body_bytes`` itself.
    """

    def __init__(self, repository: Any, settings: ServerSettings, in_flight: Any, *, check_size: bool) -> None:
        self.repository = repository
        self.settings = settings
        self.counter = in_flight
        self.check_size = check_size

    # -- health and metadata --
    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's method names
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=server_ready(self.repository))

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        # As Triton's ModelIsReady: an unknown model or version is not ready, not an error, so that
        # tritonclient.grpc's is_model_ready() says False as tritonclient.http's does for REST's 404
        try:
            model = self.repository.get(request.name, request.version or None)
        except ModelNotFoundError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=bool(model.ready))

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ServerMetadataResponse(name="edgeslim", version=__version__, extensions=GRPC_EXTENSIONS)

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        meta = self.repository.get(request.name, request.version or None).metadata()
        return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        cfg = self.repository.get(request.name, request.version or None).config()
        config = json_format.ParseDict(cfg, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return service_pb2.ModelConfigResponse(config=config)

    @_rpc
    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.name:
            models = [self.repository.get(request.name, request.version or None)]
        else:  # Triton: no name means every model
            models = [m for _, m in sorted(self.repository.models.items())]
        stats = {"model_stats": [m.stats.to_dict(m.name, m.version) for m in models]}
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # -- inference --
    async def _infer(self, request: Any, context: Any) -> Any:
        start = time.perf_counter_ns()
        counter = self.counter
        counter.in_flight += 1
        try:
            model = self.repository.get(request.model_name, request.model_version or None)
            try:
                if not model.ready:
                    raise ModelNotReadyError(f"model '{model.name}' is not ready (loading or shutting down)")
                if self.check_size and (size := request.ByteSize()) > self.settings.max_body_bytes:
                    raise BodyTooLargeError(f"request of {size} bytes exceeds the server limit of"
                                            f" {self.settings.max_body_bytes} bytes")
                req = parse_grpc_request(request)
                outputs, timing, items = await run_request(
                    model, self.settings, req, lambda: counter.in_flight == 1, deadline_s=context.time_remaining()
                )
                response = encode_grpc_response(model, req.id, outputs)
            except EdgeslimError:
                model.stats.record_failure(time.perf_counter_ns() - start)
                raise
            model.stats.record_success(time.perf_counter_ns() - start, timing, items)
            return response
        finally:
            counter.in_flight -= 1

    @_rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self._infer(request, context)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """Triton's decoupled-free streaming: one response per request, in order; an error is that response's
        ``error_message`` and the stream goes on."""
        async for request in request_iterator:
            try:
                response = await self._infer(_checked(request), context)
            except Exception as exc:  # noqa: BLE001 - reported in the stream, as Triton does
                yield service_pb2.ModelStreamInferResponse(error_message=_error_message(exc, "ModelStreamInfer"))
            else:
                yield service_pb2.ModelStreamInferResponse(infer_response=response)

    # -- model repository --
    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        rows = [e for e in self.repository.index() if e["state"] == "READY" or not request.ready]
        return service_pb2.RepositoryIndexResponse(models=rows)

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        """As REST's load: ``file:<path>`` parameters (``bytes_param``, as ``tritonclient.grpc``'s
        ``load_model(files=...)`` sends them) and ``config`` (``string_param``)."""
        name = request.model_name
        if self.settings.model_control != "explicit":
            _refuse("load", name)
        if not MODEL_NAME_RE.match(name):
            raise InputError(f"invalid model name {name[:80]!r}: letters, digits, '_', '.', '-' (at most 128)")
        files: dict[str, bytes] = {}
        config: dict[str, Any] = {}
        for key, p in request.parameters.items():
            if key.startswith("file:"):
                files[key[5:]] = _param(p, f"parameter '{key[:80]}'", ("bytes_param",))
            elif key == "config":
                config["config"] = _param(p, "parameter 'config'", ("string_param",))
            else:
                raise InputError(f"unknown load parameter '{key[:80]}'; use 'config' and 'file:<path>' (Triton's)")
        _, backend, precision = _load_options(name, config)
        repo = self.repository
        async with repo.control:
            model = await asyncio.to_thread(repo.prepare_model, name, files, backend=backend, precision=precision)
            await repo.swap_in(model)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        if self.settings.model_control != "explicit":
            _refuse("unload", request.model_name)
        async with self.repository.control:
            await self.repository.unload_model(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- not served over gRPC: an explicit UNIMPLEMENTED with what to use instead --
    async def _unimplemented(self, request: Any, context: Any, what: str) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not served over gRPC by edgeslim serve")

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._unimplemented(request, context, "system shared memory (REST has it with --shared-memory)")

    SystemSharedMemoryRegister = SystemSharedMemoryUnregister = SystemSharedMemoryStatus  # noqa: N815

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._unimplemented(request, context, "CUDA shared memory")

    CudaSharedMemoryRegister = CudaSharedMemoryUnregister = CudaSharedMemoryStatus  # noqa: N815

    async def TraceSetting(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._unimplemented(request, context, "tracing")

    async def LogSettings(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._unimplemented(request, context, "log settings")


class _TokenInterceptor(grpc.aio.ServerInterceptor):
    """The bearer token as REST's guard checks it, from the ``authorization`` metadata entry, before any method
    runs (health excepted)."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

        def deny(why: str) -> tuple[Any, Any]:
            message = (f"{why} bearer token: send the metadata entry 'authorization: Bearer <token>' set when the"
                       " server started")

            async def unary(request: Any, context: Any) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            async def stream(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                yield  # pragma: no cover - abort raises; this makes it a generator

            return (grpc.unary_unary_rpc_method_handler(unary), grpc.stream_stream_rpc_method_handler(stream))

        self._deny = {why: deny(why) for why in ("missing", "wrong")}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method in _OPEN:
            return await continuation(details)
        auth = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                # stripped as HTTP strips a header's value (perf_analyzer's -H "authorization: Bearer ..." keeps the
                # space after the colon)
                auth = (value.encode() if isinstance(value, str) else value).strip()
        scheme, _, given = (auth or b"").partition(b" ")
        # compare_digest: the time taken must not reveal how much of the token matched
        if scheme.lower() == b"bearer" and secrets.compare_digest(given.strip(), self.token):
            return await continuation(details)
        unary, stream = self._deny["missing" if auth is None else "wrong"]
        return stream if details.method == _STREAM else unary


def add_service(servicer: InferenceServicer, server: Any) -> None:
    """Register ``servicer`` for every method of the generated service descriptor, as the generated
    ``add_GRPCInferenceServiceServicer_to_server`` does, with request parsing that turns undecodable bytes into
    INVALID_ARGUMENT (:class:`_Undecodable`)."""
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for m in service.methods:
        make = grpc.stream_stream_rpc_method_handler if m.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[m.name] = make(getattr(servicer, m.name),
                                request_deserializer=_lenient(message_factory.GetMessageClass(m.input_type)),
                                response_serializer=message_factory.GetMessageClass(m.output_type).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _port_error(address: str, why: object) -> ConfigError:
    return ConfigError(
        f"cannot serve gRPC on {address}: the port is in use or the address is not this machine's ({why}); pass"
        " --grpc-port with a free port, or --grpc-port 0 to serve REST only"
    )


def check_grpc_port(settings: ServerSettings) -> None:
    """Fail before the models load, and before uvicorn starts, when the gRPC port cannot be bound: one clear error
    instead of a lifespan traceback. The server's own bind (:func:`start_grpc_server`) still checks."""
    address = grpc_address(settings.host, settings.grpc_port)
    try:
        infos = socket.getaddrinfo(settings.host, settings.grpc_port, type=socket.SOCK_STREAM)
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(sockaddr)
    except OSError as exc:
        raise _port_error(address, exc.strerror or exc) from None


async def start_grpc_server(repository: Any, settings: ServerSettings, in_flight: Any) -> Any:
    """Start ``inference.GRPCInferenceService`` on ``settings.host:settings.grpc_port`` in the running event loop.

    Returns:
        the started ``grpc.aio.Server``; stop it with ``await server.stop(grace_s)``.

    Raises:
        ConfigError: the port is taken (by another process too: port reuse is off) or the host is not this machine's.
    """
    limit = settings.max_body_bytes
    if settings.model_control == "explicit":
        limit = max(limit, settings.max_upload_bytes)
    limit = min(limit, _GRPC_MAX_MESSAGE)
    options = [
        ("grpc.max_receive_message_length", limit),  # larger: RESOURCE_EXHAUSTED from gRPC itself
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),  # else a second server binds a port already in use and shares its traffic
    ]
    interceptors = [_TokenInterceptor(settings.token)] if settings.token else []
    server = grpc.aio.server(interceptors=interceptors, options=options)
    servicer = InferenceServicer(repository, settings, in_flight, check_size=limit > settings.max_body_bytes)
    add_service(servicer, server)
    address = grpc_address(settings.host, settings.grpc_port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if not bound:
        # freed here, in its loop: left to the garbage collector (through this frame in the error's traceback)
        # grpcio's Cython objects crash the process
        await server.stop(None)
        del server, servicer
        raise _port_error(address, "gRPC could not bind it")
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s", address)
    return server
