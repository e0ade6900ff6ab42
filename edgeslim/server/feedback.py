"""``POST /v2/models/{m}[/versions/{v}]/feedback``: the true class of an answered request, in the v2 extension style.

Body ``{"id": "<the id of the infer response>", "label": <class name or index, or a list of them, one per item>}``.
``GET`` on the same path returns the model's live counts and tests (also in its statistics). What is counted and
tested is :mod:`edgeslim.server.monitor`'s; this module only routes.
"""

from __future__ import annotations

from typing import Any, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..errors import InputError
from .schemas import ERRORS

router = APIRouter(tags=["feedback"])

Label = Union[StrictStr, StrictInt]


class FeedbackBody(BaseModel):
    """Ground truth for one answered inference request."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr = Field(description="the `id` of the infer response (the client's, or the one the server generated)")
    label: Union[Label, list[Label]] = Field(
        description="the true class (name or index), or one per item when the request held a batch"
    )


def _monitor(request: Request, name: str, version: str | None) -> Any:
    model = request.app.state.repository.get(name, version)
    if model.monitor is None:
        settings = request.app.state.repository.settings
        why = ("its model_field_monitoring setting turns it off" if model.name in settings.model_field_monitoring
               else "the server runs with field monitoring off; restart it without --no-field-monitoring")
        raise InputError(f"model '{model.name}' keeps no feedback: {why}")
    return model.monitor


_RESPONSES: dict[int | str, dict[str, Any]] = {k: v for k, v in ERRORS.items() if k in (400, 401, 404)} | {
    409: {"description": "this request already has feedback"},
    410: {"description": "the request has left the feedback ring (too old)"},
    422: {"description": "the model file carries no val reference to test live recall against"},
}


@router.post("/v2/models/{model_name}/feedback", summary="Ground-truth feedback", responses=_RESPONSES)
async def feedback(request: Request, model_name: str, body: FeedbackBody) -> dict[str, Any]:
    return {"model": model_name, **_monitor(request, model_name, None).feedback(body.id, body.label)}


@router.post("/v2/models/{model_name}/versions/{version}/feedback", summary="Ground-truth feedback (one version)",
             responses=_RESPONSES)
async def feedback_version(request: Request, model_name: str, version: str, body: FeedbackBody) -> dict[str, Any]:
    return {"model": model_name, **_monitor(request, model_name, version).feedback(body.id, body.label)}


@router.get("/v2/models/{model_name}/feedback", summary="Live accuracy and drift of a model")
async def report(request: Request, model_name: str) -> dict[str, Any]:
    return {"model": model_name, **_monitor(request, model_name, None).report()}


@router.get("/v2/models/{model_name}/versions/{version}/feedback", summary="Live accuracy and drift (one version)")
async def report_version(request: Request, model_name: str, version: str) -> dict[str, Any]:
    return {"model": model_name, **_monitor(request, model_name, version).report()}
