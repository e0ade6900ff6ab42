"""The KServe v2 / Open Inference Protocol wire format: datatypes, the binary tensor extension, request parsing
and validation, response encoding and the classification extension.

Pure functions over bytes, dicts and numpy arrays (no web framework), so the codec is tested on its own and the
routers stay thin. Every malformed request raises :class:`~edgeslim.errors.InputError` (HTTP 400) with a
message naming the bad field.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .errors import BodyTooLargeError

# v2 datatype <-> numpy dtype. BYTES is an object array of ``bytes``.
_V2_TO_NP: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_NP_TO_V2 = {np.dtype(v).name: k for k, v in _V2_TO_NP.items() if k != "BYTES"}
# Resolved once: np.dtype(...) and dtype.name cost microseconds, and the request path asks for them per tensor.
_V2_DTYPES = {k: np.dtype(v) for k, v in _V2_TO_NP.items()}
_V2_OF_DTYPE = {np.dtype(v): k for k, v in _V2_TO_NP.items()}
_LITTLE_ENDIAN = {k: dt.newbyteorder("<") for k, dt in _V2_DTYPES.items() if k != "BYTES"}
_ENCODER = json.JSONEncoder(separators=(",", ":"))

#: Largest rank / dimension a request may declare, so a hostile shape cannot make us allocate absurdly.
MAX_RANK = 8


def v2_datatype(dtype: str | np.dtype) -> str:
    """The v2 datatype name (``"FP32"``) of a numpy dtype (``"float32"``)."""
    if isinstance(dtype, np.dtype):
        known = _V2_OF_DTYPE.get(dtype)
        if known is not None:
            return known
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NP_TO_V2[dt.name]
    except KeyError:
        raise InputError(f"numpy dtype {dt} has no KServe v2 datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a v2 datatype name; :class:`InputError` for an unknown name."""
    try:
        return _V2_DTYPES[datatype]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown datatype {datatype!r}; use one of {', '.join(_V2_TO_NP)}"
        ) from None


# -- binary tensor extension ------------------------------------------------------------------------------------
def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """BYTES elements (row-major) as 4-byte little-endian length + bytes, the binary extension's layout."""
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Inverse of :func:`serialize_bytes_tensor`; checks that exactly ``count`` elements fill ``buf``."""
    buf = memoryview(buf)
    out: list[bytes] = []
    pos = 0
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise InputError(f"input '{name}': BYTES data truncated inside an element length prefix")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + n > len(buf):
            raise InputError(f"input '{name}': BYTES element of {n} bytes runs past the end of its binary data")
        out.append(bytes(buf[pos : pos + n]))
        pos += n
        if len(out) > count:
            break
    if len(out) != count:
        raise InputError(f"input '{name}': binary BYTES data holds {len(out)} elements; its shape needs {count}")
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def tensor_bytes(arr: np.ndarray) -> bytes:
    """Raw little-endian row-major bytes of a tensor (BYTES tensors length-prefixed)."""
    if arr.dtype == object:
        return serialize_bytes_tensor(arr)
    if arr.dtype.byteorder in "<|" or (arr.dtype.byteorder == "=" and sys.byteorder == "little"):
        return arr.tobytes()  # already little-endian; tobytes() is row-major whatever the strides
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def decode_body(body: bytes | memoryview, content_encoding: str | None, max_bytes: int) -> bytes | memoryview:
    """Undo ``Content-Encoding: gzip|deflate`` without ever holding more than ``max_bytes`` decompressed.

    A small compressed body can expand to gigabytes (a decompression bomb); decompression stops at the limit.
    """
    enc = (content_encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "deflate"):
        raise InputError(f"Content-Encoding {content_encoding!r} is not supported; use gzip, deflate or none")
    # wbits: 16+15 = gzip container; 15 = zlib container (what HTTP "deflate" means and tritonclient sends).
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, max_bytes + 1)
        if len(out) > max_bytes or d.unconsumed_tail:
            raise BodyTooLargeError(
                f"the {enc}-compressed request body expands beyond the limit of {max_bytes} bytes; send a smaller request"
            )
        out += d.flush()
    except zlib.error as exc:
        raise InputError(f"the request body is not valid {enc} data ({exc})") from exc
    if len(out) > max_bytes:
        raise BodyTooLargeError(f"the decompressed request body exceeds the limit of {max_bytes} bytes")
    if not d.eof:
        raise InputError(f"the {enc}-compressed request body is truncated")
    return out


# -- requests ---------------------------------------------------------------------------------------------------
@dataclass
class RequestedOutput:
    """One entry of the request's ``outputs``: which output, binary or JSON, top-k classification, and the
    shared-memory destination (``memoryview``, with the parameters to echo) when the output goes there."""

    name: str
    binary: bool
    classification: int = 0
    shm: tuple[memoryview, dict[str, Any]] | None = None


#: ``shm(region, offset, byte_size, where) -> memoryview``: resolves shared-memory parameters
#: (:meth:`edgeslim.server.sharedmem.SharedMemoryRegistry.view`); None where shared memory is off.
ShmResolver = Any
_SHM_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_SHM_OFF = (
    "shared memory is disabled on this server; start it with `edgeslim serve --shared-memory`, or send the data"
)


def _shm_view(params: dict[str, Any], shm: ShmResolver, where: str) -> tuple[memoryview, dict[str, Any]]:
    """The shared-memory destination or source a tensor's ``shared_memory_*`` parameters name, and the parameters
    to echo in the response."""
    if "shared_memory_region" not in params:
        raise InputError(f"{where}: shared-memory parameters without shared_memory_region")
    if shm is None:
        raise InputError(f"{where}: {_SHM_OFF}")
    if any(k.startswith("shared_memory") and k not in _SHM_KEYS for k in params):
        raise InputError(f"{where}: unknown shared-memory parameter; use {', '.join(_SHM_KEYS)}")
    if "shared_memory_byte_size" not in params:
        raise InputError(f"{where}: shared_memory_region needs shared_memory_byte_size")
    echo = {k: params[k] for k in _SHM_KEYS if k in params}
    view = shm(params["shared_memory_region"], params.get("shared_memory_offset", 0),
               params["shared_memory_byte_size"], where)
    return view, echo



@dataclass
class InferRequest:
    """A parsed, framework-free inference request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_default: bool = False
    timeout_us: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape(t: Mapping[str, Any], where: str) -> tuple[int, ...]:
    shape = t.get("shape")
    # JSON integers are exactly int (type() is not bool), so the check needs no isinstance per dimension.
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_RANK:
        raise InputError(f"{where}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
    return tuple(shape)


def _json_array(data: Any, dt: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    where = f"input '{name}'"
    if not isinstance(data, list):
        raise InputError(f"{where}: 'data' must be a (flat or nested) JSON list, got {type(data).__name__}")
    if dt.kind == "O":  # BYTES tensors
        flat = np.asarray(data, dtype=object).reshape(-1)
        if not all(isinstance(x, str) for x in flat):
            raise InputError(f"{where}: BYTES data must be JSON strings")
        arr = np.empty(flat.size, dtype=object)
        arr[:] = [x.encode("utf-8") for x in flat]
    else:
        try:
            # Parse without a dtype first so that "1.5" for an INT tensor or true for FP32 is caught, not cast.
            raw = np.asarray(data)
        except ValueError as exc:
            raise InputError(f"{where}: 'data' is ragged (nested lists of different lengths): {exc}") from None
        kind = raw.dtype.kind
        ok = {
            "b": kind == "b",
            "i": kind in "iu",
            "u": kind in "iu",
            "f": kind in "iuf",
        }[dt.kind] or raw.size == 0
        if not ok:
            raise InputError(f"{where}: 'data' holds {raw.dtype.name} values, which are not valid {v2_datatype(dt)}")
        if kind in "iu" and dt.kind in "iu":
            info = np.iinfo(dt)
            if raw.size and (raw.min() < info.min or raw.max() > info.max):
                raise InputError(f"{where}: values out of range for {v2_datatype(dt)}")
        arr = raw.astype(dt).reshape(-1)
    if arr.size != count:
        raise InputError(f"{where}: 'data' has {arr.size} elements but shape {list(shape)} needs {count}")
    return arr.reshape(shape)


def _raw_tensor(buf: bytes | memoryview, datatype: str, dt: np.dtype, shape: tuple[int, ...], name: str,
                where: str, size_field: str) -> np.ndarray:
    """A tensor over raw little-endian bytes (a view, no copy; BYTES elements deserialized), which must be exactly
    the size ``shape`` of ``datatype`` needs; ``size_field`` names the request field that gave the size."""
    count = math.prod(shape)
    if dt.kind == "O":  # BYTES tensors
        return deserialize_bytes_tensor(buf, count, name).reshape(shape)
    expected = count * dt.itemsize
    if len(buf) != expected:
        raise InputError(
            f"{where}: {size_field} is {len(buf)} bytes but shape {list(shape)} of {datatype} needs {expected}"
        )
    # astype is a no-op on little-endian hosts
    return np.frombuffer(buf, dtype=_LITTLE_ENDIAN[datatype]).astype(dt, copy=False).reshape(shape)


def parse_infer_request(
    body: bytes | memoryview, header_length: str | int | None, shm: ShmResolver = None
) -> InferRequest:
    """Parse a v2 inference request, JSON or JSON header + binary tensors, or tensors in shared memory.

    Args:
        body: the whole (decompressed) request body.
        header_length: the ``Inference-Header-Content-Length`` header (None: the body is all JSON).
        shm: resolves ``shared_memory_region`` parameters to views of the registered regions; None refuses them.

    Raises:
        InputError: invalid JSON, missing fields, unknown datatypes, byte counts that do not add up, etc.
    """
    if header_length is None:
        json_len = len(body)
    else:
        try:
            json_len = int(header_length)
        except (TypeError, ValueError):
            raise InputError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
        if not 0 < json_len <= len(body):
            raise InputError(
                f"Inference-Header-Content-Length is {json_len} but the body has {len(body)} bytes"
            )
    head = body[:json_len]
    try:
        header = json.loads(head if isinstance(head, bytes) else bytes(head))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = "" if header_length is not None else " (binary tensors need the Inference-Header-Content-Length header)"
        raise InputError(f"the request header is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise InputError("the request must be a JSON object with an 'inputs' list")

    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise InputError("'parameters' must be a JSON object")
    timeout = params.get("timeout")
    if timeout is not None and not (_is_int(timeout) and timeout >= 0):
        raise InputError(f"parameters.timeout must be a non-negative integer (microseconds), got {timeout!r}")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InputError("parameters.binary_data_output must be true or false")
    for unsupported in ("sequence_id", "priority"):
        if params.get(unsupported) not in (None, 0, ""):
            raise InputError(f"parameters.{unsupported} is not supported by this server; remove it")

    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InputError(f"'id' must be a string, got {type(req_id).__name__}")

    tensors = header.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InputError("'inputs' must be a non-empty list of tensors")
    binary = memoryview(body)[json_len:]
    pos = 0
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise InputError(f"inputs[{i}] must be an object with a string 'name'")
        name = t["name"]
        where = f"input '{name}'"
        if name in inputs:
            raise InputError(f"{where} appears twice")
        dt = numpy_dtype(t.get("datatype"))
        shape = _shape(t, where)
        tparams = t.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise InputError(f"{where}: 'parameters' must be a JSON object")
        size = tparams.get("binary_data_size")
        if any(k.startswith("shared_memory") for k in tparams):
            if size is not None or "data" in t:
                raise InputError(f"{where} has both shared-memory parameters and data; send one")
            view, _ = _shm_view(tparams, shm, where)
            arr = _raw_tensor(view, t["datatype"], dt, shape, name, where, "shared_memory_byte_size")
        elif size is not None:
            if "data" in t:
                raise InputError(f"{where} has both 'data' and parameters.binary_data_size; send one")
            if not (_is_int(size) and size >= 0):
                raise InputError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if pos + size > len(binary):
                raise InputError(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - pos} binary bytes left)"
                )
            chunk = binary[pos : pos + size]
            pos += size
            arr = _raw_tensor(chunk, t["datatype"], dt, shape, name, where, "binary_data_size")
        elif "data" in t:
            arr = _json_array(t["data"], dt, shape, name)
        else:
            raise InputError(f"{where} has neither 'data' nor parameters.binary_data_size")
        inputs[name] = arr
    if pos != len(binary):
        raise InputError(
            f"the body has {len(binary) - pos} bytes after the last binary input; "
            "the binary_data_size values must add up to the bytes after the JSON header"
        )

    outputs = header.get("outputs")
    requested: list[RequestedOutput] | None = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InputError("'outputs' must be a list")
        requested = []
        for j, o in enumerate(outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InputError(f"outputs[{j}] must be an object with a string 'name'")
            op = o.get("parameters") or {}
            if not isinstance(op, dict):
                raise InputError(f"output '{o['name']}': 'parameters' must be a JSON object")
            dest = None
            if any(k.startswith("shared_memory") for k in op):
                dest = _shm_view(op, shm, f"output '{o['name']}'")
            b = op.get("binary_data", binary_default)
            k = op.get("classification", 0)
            if not isinstance(b, bool):
                raise InputError(f"output '{o['name']}': binary_data must be true or false")
            if not (_is_int(k) and k >= 0):
                raise InputError(f"output '{o['name']}': classification must be a non-negative integer, got {k!r}")
            requested.append(RequestedOutput(o["name"], b, k, dest))
    return InferRequest(req_id, inputs, requested, binary_default, timeout, params)


# -- classification extension -----------------------------------------------------------------------------------
def classify_tensor(scores: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """Top-``k`` of the last axis as BYTES ``"score:index:label"`` strings (Triton's classification extension).

    Scores are the raw output values, as Triton reports them; the label part is omitted when the model has no
    label for that index. Shape: ``scores.shape[:-1] + (k,)``, with ``k`` capped at the number of classes.
    """
    if scores.ndim < 1 or scores.shape[-1] == 0:
        raise InputError(f"classification needs an output with a class axis, got shape {list(scores.shape)}")
    k = min(k, scores.shape[-1])
    flat = scores.reshape(-1, scores.shape[-1]).astype(np.float64)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r in range(flat.shape[0]):
        for c, idx in enumerate(top[r]):
            label = f":{labels[idx]}" if idx < len(labels) else ""
            out[r, c] = f"{flat[r, idx]:f}:{idx}{label}".encode("utf-8")
    return out.reshape(scores.shape[:-1] + (k,))


# -- responses --------------------------------------------------------------------------------------------------
def _json_data(arr: np.ndarray) -> list[Any]:
    if arr.dtype == object:
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    return arr.reshape(-1).tolist()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool | dict[str, Any]]],
) -> tuple[bytes, int | None]:
    """Encode outputs ``(name, array, binary)`` as a v2 response. ``binary`` may instead be the shared-memory
    parameters of an output already written there: the entry then carries them and no data.

    Returns:
        ``(body, header_length)``: ``header_length`` is the JSON header's length when any output is binary (the
        value of ``Inference-Header-Content-Length``), else None and the body is plain JSON.
    """
    entries = []
    blobs = []
    for name, arr, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if isinstance(binary, dict):  # already written to shared memory: echo where
            entry["parameters"] = binary
        elif binary:
            raw = tensor_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(arr)
        entries.append(entry)
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = entries
    header = _ENCODER.encode(head).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def write_shared_memory(arr: np.ndarray, view: memoryview, name: str) -> int:
    """Write an output tensor into its shared-memory destination (little-endian, BYTES serialized); its size.

    Raises:
        InputError: the destination is smaller than the tensor.
    """
    raw = tensor_bytes(arr)
    if len(raw) > len(view):
        raise InputError(
            f"output '{name}' needs {len(raw)} bytes but its shared_memory_byte_size is {len(view)}; register a"
            " larger region"
        )
    view[: len(raw)] = raw
    return len(raw)
