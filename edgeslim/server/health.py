"""Health: ``/v2/health/live`` and ``/v2/health/ready`` (the only routes that never need the token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

router = APIRouter(prefix="/v2/health", tags=["health"])


def server_ready(repo: Any) -> bool:
    """Every model loaded and the server not shutting down (REST's ``/v2/health/ready``, gRPC's ``ServerReady``)."""
    # under explicit model control a server with no model yet is ready: it is waiting for load requests
    some = bool(repo.models) or (repo.settings.model_control == "explicit" and repo.loaded)
    return some and not repo.closing and all(m.ready for m in repo.models.values())


@router.get("/live", summary="Liveness", responses={200: {"description": "the server process is up"}})
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/ready",
    summary="Readiness",
    responses={200: {"description": "every model is loaded"}, 503: {"description": "loading or shutting down"}},
)
async def ready(request: Request) -> Response:
    return Response(status_code=200 if server_ready(request.app.state.repository) else 503)
