"""The gRPC tests' bad-request corpus: malformed ``inference.GRPCInferenceService`` calls and the status each gets.

Built from the generated messages ``tritonclient[grpc]`` ships, sent through a raw channel (``tritonclient.grpc``
would refuse most of them before sending). Each case names the one thing wrong with it; ``counted`` says whether
the request reached a served model, whose statistics then count one failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from server_helpers import batch

MODEL = "tiny"
SERVICE = "/inference.GRPCInferenceService/"


@dataclass
class Case:
    label: str
    method: str
    request: Any  # a message, or raw bytes sent as they are
    code: str  # grpc.StatusCode name
    counted: bool = False  # reached model 'tiny': one more failure in its statistics


def _infer(model: str = MODEL, version: str = "", *, inputs: list[dict] | None = None, raw: list[bytes] | None = None,
           outputs: list[dict] | None = None, params: dict | None = None) -> Any:
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for t in inputs if inputs is not None else [{}]:
        t = {"name": "input", "datatype": "FP32", "shape": [1, 3, 16, 16], **t}
        tensor = req.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for key, value in t.get("contents", {}).items():
            getattr(tensor.contents, key).extend(value)
        for key, (kind, value) in t.get("params", {}).items():
            setattr(tensor.parameters[key], kind, value)
    for o in outputs or []:
        out = req.outputs.add(name=o["name"])
        for key, (kind, value) in o.get("params", {}).items():
            setattr(out.parameters[key], kind, value)
    for key, (kind, value) in (params or {}).items():
        setattr(req.parameters[key], kind, value)
    good = batch(1, seed=3).astype("<f4").tobytes()
    req.raw_input_contents.extend([good] if raw is None else raw)
    return req


def corpus(max_body_bytes: int) -> list[Case]:
    """Every case; one is a message just over ``max_body_bytes`` (the server's limit)."""
    from tritonclient.grpc import service_pb2

    x = batch(1, seed=3)
    good = x.astype("<f4").tobytes()
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    typed = {"fp32_contents": x.ravel().tolist()}
    bad = "INVALID_ARGUMENT"
    cases = [
        Case("unknown model", "ModelInfer", _infer("tinny"), "NOT_FOUND"),
        Case("unknown version", "ModelInfer", _infer(version="2"), "NOT_FOUND"),
        Case("model name with a path", "ModelInfer", _infer("../etc"), "NOT_FOUND"),
        Case("metadata of an unknown model", "ModelMetadata", service_pb2.ModelMetadataRequest(name="nope"),
             "NOT_FOUND"),
        Case("config of an unknown version", "ModelConfig", service_pb2.ModelConfigRequest(name=MODEL, version="9"),
             "NOT_FOUND"),
        Case("statistics of an unknown model", "ModelStatistics", service_pb2.ModelStatisticsRequest(name="nope"),
             "NOT_FOUND"),
        Case("load with model control off", "RepositoryModelLoad",
             service_pb2.RepositoryModelLoadRequest(model_name=MODEL), "PERMISSION_DENIED"),
        Case("unload with model control off", "RepositoryModelUnload",
             service_pb2.RepositoryModelUnloadRequest(model_name=MODEL), "PERMISSION_DENIED"),
        Case("no inputs", "ModelInfer", _infer(inputs=[], raw=[]), bad, True),
        Case("unknown input name", "ModelInfer", _infer(inputs=[{"name": "inptu"}]), bad, True),
        Case("empty input name", "ModelInfer", _infer(inputs=[{"name": ""}]), bad, True),
        Case("duplicate input", "ModelInfer", _infer(inputs=[{}, {}], raw=[good, good]), bad, True),
        Case("wrong datatype, right byte count", "ModelInfer",
             _infer(inputs=[{"datatype": "INT32"}]), bad, True),
        Case("unknown datatype", "ModelInfer", _infer(inputs=[{"datatype": "FLOAT"}]), bad, True),
        Case("raw bytes 4 short", "ModelInfer", _infer(raw=[good[:-4]]), bad, True),
        Case("raw bytes 1 over", "ModelInfer", _infer(raw=[good + b"\0"]), bad, True),
        Case("two raw entries for one input", "ModelInfer", _infer(raw=[good, good]), bad, True),
        Case("wrong shape, right byte count", "ModelInfer", _infer(inputs=[{"shape": [1, 3, 8, 32]}]), bad, True),
        Case("negative dimension", "ModelInfer", _infer(inputs=[{"shape": [-1, 3, 16, 16]}]), bad, True),
        Case("rank 9", "ModelInfer", _infer(inputs=[{"shape": [1] * 9}]), bad, True),
        Case("batch over max_batch_size", "ModelInfer",
             _infer(inputs=[{"shape": [9, 3, 16, 16]}], raw=[good * 9]), bad, True),
        Case("batch 0", "ModelInfer", _infer(inputs=[{"shape": [0, 3, 16, 16]}], raw=[b""]), bad, True),
        Case("huge shape, few bytes", "ModelInfer", _infer(inputs=[{"shape": [2**40, 3, 16, 16]}]), bad, True),
        Case("NaN in the input", "ModelInfer", _infer(raw=[nan.astype("<f4").tobytes()]), bad, True),
        Case("typed contents in the wrong field", "ModelInfer",
             _infer(inputs=[{"contents": {"int_contents": [1] * 768}}], raw=[]), bad, True),
        Case("typed contents one element short", "ModelInfer",
             _infer(inputs=[{"contents": {"fp32_contents": typed["fp32_contents"][:-1]}}], raw=[]), bad, True),
        Case("typed and raw contents both", "ModelInfer", _infer(inputs=[{"contents": typed}]), bad, True),
        Case("neither typed nor raw contents", "ModelInfer", _infer(raw=[]), bad, True),
        Case("FP16 as typed contents", "ModelInfer",
             _infer(inputs=[{"datatype": "FP16", "contents": {"fp32_contents": [0.0] * 768}}], raw=[]), bad, True),
        Case("INT8 typed value out of range", "ModelInfer",
             _infer(inputs=[{"datatype": "INT8", "contents": {"int_contents": [300] * 768}}], raw=[]), bad, True),
        Case("BYTES with a broken length prefix", "ModelInfer",
             _infer(inputs=[{"datatype": "BYTES"}], raw=[b"\xff\xff\xff\x7f" + b"x" * 8]), bad, True),
        Case("shared memory input", "ModelInfer",
             _infer(inputs=[{"params": {"shared_memory_region": ("string_param", "r")}}], raw=[]), bad, True),
        Case("unknown output", "ModelInfer", _infer(outputs=[{"name": "logit"}]), bad, True),
        Case("output without a name", "ModelInfer", _infer(outputs=[{"name": ""}]), bad, True),
        Case("classification as a string", "ModelInfer",
             _infer(outputs=[{"name": "logits", "params": {"classification": ("string_param", "3")}}]), bad, True),
        Case("negative classification", "ModelInfer",
             _infer(outputs=[{"name": "logits", "params": {"classification": ("int64_param", -2)}}]), bad, True),
        Case("timeout as a string", "ModelInfer", _infer(params={"timeout": ("string_param", "soon")}), bad, True),
        Case("priority (unsupported)", "ModelInfer", _infer(params={"priority": ("uint64_param", 2)}), bad, True),
        Case("not a protobuf message", "ModelInfer", b"\xff\xff\xff\xff\x0f", bad),
        Case("message over the size limit", "ModelInfer", _infer(raw=[b"\0" * (max_body_bytes + 1)]),
             "RESOURCE_EXHAUSTED"),
    ]
    return cases


def call(channel: Any, case: Case, metadata: tuple = (), timeout: float = 30.0) -> Any:
    """Send ``case`` as it is (a message serialized, raw bytes unchanged); returns the reply or raises RpcError."""
    method = channel.unary_unary(SERVICE + case.method, request_serializer=lambda m: m if isinstance(m, bytes)
                                 else m.SerializeToString(), response_deserializer=None)
    return method(case.request, metadata=metadata, timeout=timeout)
