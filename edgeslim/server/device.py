"""``GET /v2/edgeslim/device``: what this server runs on, for a client that compresses for it.

Not part of KServe v2 (listed as the ``edgeslim_device`` extension in the server metadata). A search on a laptop
reads it to compress for the device behind the server (``edgeslim search --target http://device:8000``): the
hardware target name decides the INT8 scheme and the precisions worth trying, the backend the file format. It
needs the token like every route but health: the CPU model and flags are a fingerprint of the machine.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from .schemas import ERRORS

#: The name of this endpoint in the server metadata's ``extensions``.
EXTENSION = "edgeslim_device"

router = APIRouter(tags=["device"], responses={k: v for k, v in ERRORS.items() if k == 401})


@router.get("/v2/edgeslim/device", summary="The hardware this server runs on and how it serves")
async def device(request: Request) -> dict[str, Any]:
    from ..devices.targets import detect

    found = getattr(request.app.state, "device_info", None)
    if found is None:  # detection reads /proc and asks NVML: once per server
        found = await run_in_threadpool(detect)
        request.app.state.device_info = found
    cpu = found.get("cpu") or {}
    settings = request.app.state.settings
    return {
        "target": found.get("name"),
        "title": found.get("title"),
        "kind": found.get("kind"),
        "why": found.get("why"),
        "cpu": {"model": cpu.get("model"), "machine": cpu.get("machine"), "isa": cpu.get("isa") or {},
                "logical_cores": cpu.get("logical_cores")},
        "gpus": found.get("gpus") or [],
        "backend": settings.backend,
        "device": settings.device,
        "threads": settings.threads,
        "model_control": settings.model_control,
        "edgeslim": __version__,
    }
