"""Pydantic models of the JSON the server speaks; they exist so the OpenAPI document is accurate.

Request bodies are parsed by :mod:`edgeslim.server.protocol` (the binary extension is not JSON), so these models
describe the wire format for the docs and type the JSON responses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every non-200 answer."""

    error: str = Field(description="what was wrong and how to fix it")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="KServe v2 datatype, e.g. FP32")
    shape: list[int] = Field(description="-1 marks a variable dimension")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: this tensor's bytes follow the JSON header (binary extension)"
    )
    data: list[Any] | None = Field(None, description="row-major values, flat or nested; omit for binary data")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data` (bool) and `classification` (top-k as BYTES 'score:index:label')"
    )


class InferRequestBody(BaseModel):
    """A v2 inference request (the JSON part; with the binary extension, raw tensors follow it)."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_output` (bool), `timeout` (microseconds)"
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class Prediction(BaseModel):
    index: int
    label: str
    probability: float


class CriticalClass(BaseModel):
    index: int
    label: str
    probability: float
    threshold: float | None = Field(
        description="decision threshold from the artifact's manifest; null: the class fires when it is the argmax"
    )
    fired: bool = Field(description="probability >= threshold (or the decision, when the class has no threshold)")


class ImageResult(BaseModel):
    prediction: Prediction = Field(description="the decision: the most probable fired critical class, else the argmax")
    top_k: list[Prediction]
    critical: list[CriticalClass]
    fired: list[str] = Field(description="labels of the critical classes that fired, most probable first")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ImageResult] = Field(description="one entry per uploaded image, in upload order")


class Stats(BaseModel):
    model_stats: list[dict[str, Any]]


class ModelConfig(BaseModel):
    model_config = {"extra": "allow"}

    name: str
    platform: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    dynamic_batching: dict[str, Any] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in (
        (400, "malformed request or input that does not match the model"),
        (401, "missing or wrong bearer token"),
        (404, "unknown model or version"),
        (413, "request body larger than the server's limit"),
        (503, "queue full or shutting down; see Retry-After"),
        (504, "no answer within the request timeout"),
    )
}

