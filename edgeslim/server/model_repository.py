"""Triton's model repository extension, read-only: ``POST /v2/repository/index`` lists what the server serves.

A client no longer has to guess a model's name: ``tritonclient``'s ``get_model_repository_index()`` answers
``[{"name", "version", "state": "READY" | "UNAVAILABLE", "reason"}, ...]``. Model control stays off, as in
Triton's default ``--model-control-mode=none``: the server serves the artifacts it was started with, and
``.../load`` / ``.../unload`` are refused. Triton answers those with 503 UNAVAILABLE, which invites a retry that can
never succeed; the refusal does not depend on the server's state, so it is a 403 whose message says what to do.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from .errors import ModelControlError, validation_message
from .schemas import ERRORS, ErrorResponse

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


def _refuse(action: str, model_name: str) -> None:
    raise ModelControlError(
        f"cannot {action} model '{model_name[:128]}': model control is off, this server serves the artifacts it was"
        " started with (Triton's --model-control-mode=none); restart `edgeslim serve` with the artifacts to serve"
    )


@router.post("/v2/repository/models/{model_name}/load", summary="Load a model (refused: model control is off)",
             responses=_CONTROL)
async def load(model_name: str) -> None:
    _refuse("load", model_name)


@router.post("/v2/repository/models/{model_name}/unload", summary="Unload a model (refused: model control is off)",
             responses=_CONTROL)
async def unload(model_name: str) -> None:
    _refuse("unload", model_name)
