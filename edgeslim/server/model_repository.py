"""Triton's model repository extension: the index, and load / unload under explicit model control.

``POST /v2/repository/index`` lists the models (``tritonclient``'s ``get_model_repository_index()``):
``[{"name", "version", "state": "READY" | "UNAVAILABLE", "reason"}, ...]``.

By default model control is off, as in Triton's default ``--model-control-mode=none``: the server serves the
artifacts it was started with and ``.../load`` / ``.../unload`` are refused. Triton answers those with 503
UNAVAILABLE, which invites a retry that can never succeed; the refusal does not depend on the server's state, so it
is a 403 whose message says what to do. Started with ``model_control="explicit"`` the server loads and unloads
models as Triton's explicit mode does, including Triton's artifact upload (``"file:<path>"`` parameters holding
base64 bytes, as ``tritonclient``'s ``load_model(model_name, files=...)`` sends them): that is how ``edgeslim
search --target http://device:8000`` measures each candidate on the device itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from .errors import ModelControlError, validation_message
from .schemas import ERRORS, ErrorResponse
from .settings import MODEL_NAME_RE

#: Triton's name for this extension in the server metadata's ``extensions``.
EXTENSION = "model_repository"


class IndexRequest(BaseModel):
    """The index request; tritonclient sends an empty body, Triton's docs ``{"ready": true}``."""

    model_config = ConfigDict(extra="ignore")  # Triton ignores fields it does not use (e.g. repository_name)

    ready: bool = Field(False, description="only list the models ready for inference")


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, or UNAVAILABLE while loading or shutting down")
    reason: str = Field(description="why the model is not READY; empty when it is")


router = APIRouter(tags=["model repository"], responses={k: v for k, v in ERRORS.items() if k in (400, 401)})

_INDEX_DOC = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": IndexRequest.model_json_schema()}},
    }
}


@router.post("/v2/repository/index", summary="Every model the server serves, with its state",
             response_model=list[IndexEntry], openapi_extra=_INDEX_DOC)
async def index(request: Request) -> list[dict[str, Any]]:
    # parsed here rather than as a body parameter: tritonclient sends an empty body without a Content-Type
    raw = await request.body()
    try:
        body = IndexRequest.model_validate_json(raw) if raw.strip() else IndexRequest()
    except ValidationError as exc:
        raise InputError(
            'invalid repository index request: ' + validation_message(exc.errors()) + '; send {} or {"ready": true}'
        ) from None
    repo = request.app.state.repository
    return [e for e in repo.index() if e["state"] == "READY" or not body.ready]


_CONTROL = {403: {"model": ErrorResponse, "description": "model control is off"}}


class LoadRequest(BaseModel):
    """Triton's load request: ``parameters.config`` (a JSON string) and ``parameters["file:<path>"]`` (base64)."""

    model_config = ConfigDict(extra="ignore")

    parameters: dict[str, Any] = Field(default_factory=dict)


def _refuse(action: str, model_name: str) -> None:
    raise ModelControlError(
        f"cannot {action} model '{model_name[:128]}': model control is off, this server serves the artifacts it was"
        " started with (Triton's --model-control-mode=none); restart `edgeslim serve` with the artifacts to serve,"
        " or with --model-control explicit (and --token) to load models over the API"
    )


def _load_options(name: str, params: dict[str, Any]) -> tuple[dict[str, bytes], str | None, str | None]:
    """The uploaded files and the backend / precision asked for, from a load request's parameters.

    ``config`` is a model configuration as a JSON string, as ``tritonclient``'s ``load_model(config=...)`` sends it;
    edgeslim reads ``backend`` and ``parameters.precision`` (``{"string_value": "int8"}``) from it.
    """
    files: dict[str, bytes] = {}
    backend = precision = None
    for key, value in params.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InputError(f"parameter '{key[:80]}' must be the file's bytes in base64, got {type(value).__name__}")
            try:
                files[key[5:]] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"parameter '{key[:80]}' is not valid base64") from None
        elif key == "config":
            try:
                cfg = json.loads(value) if isinstance(value, str) else None
            except json.JSONDecodeError as exc:
                raise InputError(f"parameter 'config' of model '{name}' is not JSON ({exc.msg})") from None
            if not isinstance(cfg, dict):
                raise InputError("parameter 'config' must be a JSON object as a string, e.g."
                                 ' \'{"backend": "openvino", "parameters": {"precision": {"string_value": "int8"}}}\'')
            backend = cfg.get("backend") or None
            prec = (cfg.get("parameters") or {}).get("precision")
            precision = (prec.get("string_value") if isinstance(prec, dict) else prec) or None
        else:
            raise InputError(f"unknown load parameter '{key[:80]}'; use 'config' and 'file:<path>' (Triton's)")
    return files, backend, precision


@router.post("/v2/repository/models/{model_name}/load", summary="Load or replace a model (explicit model control)",
             responses=_CONTROL, openapi_extra={"requestBody": {"required": False, "content": {
                 "application/json": {"schema": LoadRequest.model_json_schema()}}}})
async def load(model_name: str, request: Request) -> None:
    """Serve ``model_name``: from uploaded ``file:<path>`` parameters (the whole artifact, its ``manifest.json``
    included, each file checked against the manifest's sha256), or, with no files, the artifact of that name in
    the server's model paths (a reload). A model of that name already served is replaced once the new one is
    loaded; if loading fails the old one keeps serving."""
    repo = request.app.state.repository
    if repo.settings.model_control != "explicit":
        _refuse("load", model_name)
    if not MODEL_NAME_RE.match(model_name):
        raise InputError(f"invalid model name {model_name[:80]!r}: letters, digits, '_', '.', '-' (at most 128)")
    raw = await request.body()
    try:
        body = LoadRequest.model_validate_json(raw) if raw.strip() else LoadRequest()
    except ValidationError as exc:
        raise InputError("invalid load request: " + validation_message(exc.errors())) from None
    files, backend, precision = _load_options(model_name, body.parameters)
    async with repo.control:
        model = await run_in_threadpool(repo.prepare_model, model_name, files, backend=backend, precision=precision)
        await repo.swap_in(model)


@router.post("/v2/repository/models/{model_name}/unload", summary="Unload a model (explicit model control)",
             responses=_CONTROL)
async def unload(model_name: str, request: Request) -> None:
    repo = request.app.state.repository
    if repo.settings.model_control != "explicit":
        _refuse("unload", model_name)
    async with repo.control:
        await repo.unload_model(model_name)
