"""Server and model metadata: ``/v2``, ``/v2/models/{m}[/versions/{v}]`` and its ``/ready``, ``/config``,
``/stats``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from .._version import __version__
from .errors import ModelNotReadyError
from .schemas import ERRORS, ModelConfig, ModelMetadata, ServerMetadata, Stats

EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository", "statistics",
              "edgeslim_device"]

router = APIRouter(tags=["models"], responses={k: v for k, v in ERRORS.items() if k in (401, 404)})


def _model(request: Request, name: str, version: str | None = None) -> Any:
    return request.app.state.repository.get(name, version)


@router.get("/v2", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    shm = ["system_shared_memory"] if request.app.state.shared_memory is not None else []
    return {"name": "edgeslim", "version": __version__, "extensions": EXTENSIONS + shm}


@router.get("/v2/models/stats", summary="Statistics of every model", response_model=Stats)
async def all_stats(request: Request) -> dict[str, Any]:
    repo = request.app.state.repository
    return {"model_stats": [m.stats.to_dict(m.name, m.version) for _, m in sorted(repo.models.items())]}


@router.get("/v2/models/{model_name}", summary="Model metadata", response_model=ModelMetadata)
async def model_metadata(request: Request, model_name: str) -> dict[str, Any]:
    return _model(request, model_name).metadata()


@router.get("/v2/models/{model_name}/versions/{version}", summary="Model metadata (one version)",
            response_model=ModelMetadata)
async def model_version_metadata(request: Request, model_name: str, version: str) -> dict[str, Any]:
    return _model(request, model_name, version).metadata()


async def _ready(request: Request, model_name: str, version: str | None) -> Response:
    if not _model(request, model_name, version).ready:
        raise ModelNotReadyError(f"model '{model_name}' is not ready (loading or shutting down)")
    return Response(status_code=200)


@router.get("/v2/models/{model_name}/ready", summary="Model readiness",
            responses={200: {"description": "ready"}, 503: ERRORS[503]})
async def model_ready(request: Request, model_name: str) -> Response:
    return await _ready(request, model_name, None)


@router.get("/v2/models/{model_name}/versions/{version}/ready", summary="Model readiness (one version)",
            responses={200: {"description": "ready"}, 503: ERRORS[503]})
async def model_version_ready(request: Request, model_name: str, version: str) -> Response:
    return await _ready(request, model_name, version)


@router.get("/v2/models/{model_name}/config", summary="Model configuration (Triton format)",
            response_model=ModelConfig, response_model_exclude_none=True)
async def model_config(request: Request, model_name: str) -> dict[str, Any]:
    return _model(request, model_name).config()


@router.get("/v2/models/{model_name}/versions/{version}/config", summary="Model configuration (one version)",
            response_model=ModelConfig, response_model_exclude_none=True)
async def model_version_config(request: Request, model_name: str, version: str) -> dict[str, Any]:
    return _model(request, model_name, version).config()


@router.get("/v2/models/{model_name}/stats", summary="Model statistics", response_model=Stats)
async def model_stats(request: Request, model_name: str) -> dict[str, Any]:
    m = _model(request, model_name)
    return {"model_stats": [m.stats.to_dict(m.name, m.version)]}


@router.get("/v2/models/{model_name}/versions/{version}/stats", summary="Model statistics (one version)",
            response_model=Stats)
async def model_version_stats(request: Request, model_name: str, version: str) -> dict[str, Any]:
    m = _model(request, model_name, version)
    return {"model_stats": [m.stats.to_dict(m.name, m.version)]}
