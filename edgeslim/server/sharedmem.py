"""The system shared-memory extension (Triton's ``system_shared_memory``): tensors passed through POSIX shared
memory instead of the request and response bodies.

For an application on the same device as the server this is the fast path: the client writes its input once into a
shared-memory segment it created (``shm_open``, or ``tritonclient.utils.shared_memory.create_shared_memory_region``),
registers the segment under a region name, and from then on sends only the JSON header. The server maps the segment
once at registration, reads inputs as zero-copy numpy views of it, and writes requested outputs into it. A 224x224
FP32 image then costs no 0.6 MB body on the socket, no body read and no client-side serialization.

    POST /v2/systemsharedmemory/region/{name}/register   {"key": "/seg", "offset": 0, "byte_size": N}
    POST /v2/systemsharedmemory/region/{name}/unregister
    POST /v2/systemsharedmemory/unregister               (every region)
    GET  /v2/systemsharedmemory/status                   [{"name", "key", "offset", "byte_size"}, ...]
    GET  /v2/systemsharedmemory/region/{name}/status

Inputs and outputs then name ``parameters.shared_memory_region``, ``shared_memory_byte_size`` and optionally
``shared_memory_offset`` (relative to the region), as ``tritonclient``'s ``set_shared_memory`` writes them.

Off by default (``ServerSettings.shared_memory`` / ``edgeslim serve --shared-memory``): a registered region lets any
client that can reach the server make it read and write that segment with the server's permissions, so enable it
where the clients are trusted, with a token when the machine has other users. Keys are single names under
``/dev/shm`` (no ``/`` inside, no ``..``), opened without following symlinks, and must be regular files.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError, UnknownNameError
from ..registry import did_you_mean
from .errors import validation_message
from .schemas import ERRORS

#: Region names: what clients send in a URL and in ``shared_memory_region``.
REGION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: POSIX shared-memory keys as shm_open takes them: one name, optionally with a leading "/".
KEY_RE = re.compile(r"^/?[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")

SHM_ROOT = Path("/dev/shm")


class RegionNotFoundError(UnknownNameError):
    """A request names a shared-memory region that is not registered."""


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mm: mmap.mmap

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


class SharedMemoryRegistry:
    """The registered regions of one server. Used from the event loop only (registration and request parsing).

    Args:
        root: where POSIX shared memory lives (``/dev/shm`` on Linux).
    """

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self.root = Path(root)
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        """Map ``byte_size`` bytes at ``offset`` of the shared-memory segment ``key`` as region ``name``.

        Raises:
            InputError: a bad name, key, offset or size, a name already registered, a segment that does not exist,
                is not a regular file or is smaller than ``offset + byte_size``.
        """
        if not isinstance(name, str) or not REGION_NAME_RE.match(name):
            raise InputError(f"region name {name!r} is not valid: use letters, digits, '_', '.', '-' (up to 128)")
        if not isinstance(key, str) or not KEY_RE.match(key) or ".." in key:
            raise InputError(
                f"shared-memory key {key!r} is not valid: one name as shm_open takes it, e.g. '/input_0'"
                " (no '/' inside, no '..')"
            )
        offset = _check_int(offset, "offset", 0)
        byte_size = _check_int(byte_size, "byte_size", 1)
        if name in self._regions:
            raise InputError(f"shared-memory region '{name}' is already registered; unregister it first")
        path = self.root / key.lstrip("/")
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise InputError(
                f"no shared-memory segment '{key}' ({path}): create it first (shm_open, or"
                " tritonclient.utils.shared_memory.create_shared_memory_region)"
            ) from None
        except OSError as exc:
            raise InputError(f"cannot open shared-memory segment '{key}': {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"shared-memory segment '{key}' is not a regular file")
            if offset + byte_size > st.st_size:
                raise InputError(
                    f"region '{name}': offset {offset} + byte_size {byte_size} exceeds the {st.st_size} bytes of"
                    f" segment '{key}'"
                )
            mm = mmap.mmap(fd, st.st_size)
        finally:
            os.close(fd)
        self._regions[name] = Region(name, key, offset, byte_size, mm)

    def unregister(self, name: str | None = None) -> None:
        """Unmap one region (or every region when ``name`` is None). Unknown names are not an error (Triton)."""
        names = list(self._regions) if name is None else [name]
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None:
                try:
                    region.mm.close()
                except BufferError:
                    pass  # a request still holds a view of it: the mapping goes when the last view does

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            return [r.status() for _, r in sorted(self._regions.items())]
        return [self._get(name).status()]

    def _get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            have = sorted(self._regions)
            raise RegionNotFoundError(
                f"shared-memory region '{name}' is not registered.{did_you_mean(name, have)} Registered: {have}"
            )
        return region

    def view(self, name: Any, offset: Any, byte_size: Any, where: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` within region ``name``, as a writable view of the mapping.

        Raises:
            InputError: bad parameters, an unknown region, or a range outside the region.
        """
        if not isinstance(name, str):
            raise InputError(f"{where}: shared_memory_region must be a string")
        region = self._get(name)
        offset = _check_int(offset, f"{where}: shared_memory_offset", 0)
        byte_size = _check_int(byte_size, f"{where}: shared_memory_byte_size", 0)
        if offset + byte_size > region.byte_size:
            raise InputError(
                f"{where}: shared_memory_offset {offset} + shared_memory_byte_size {byte_size} exceeds region"
                f" '{name}' ({region.byte_size} bytes)"
            )
        start = region.offset + offset
        return memoryview(region.mm)[start : start + byte_size]


# -- routes ---------------------------------------------------------------------------------------------------------
class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="the shared-memory key as shm_open takes it, e.g. '/input_0'")
    offset: int = Field(default=0, ge=0, description="where the region starts in the segment")
    byte_size: int = Field(gt=0, description="the region's size in bytes")


class RegionStatus(BaseModel):
    name: str
    key: str
    offset: int
    byte_size: int


router = APIRouter(tags=["shared memory"], responses={k: v for k, v in ERRORS.items() if k in (400, 401, 404)})


def registry(request: Request) -> SharedMemoryRegistry:
    reg = request.app.state.shared_memory
    if reg is None:
        raise InputError(
            "shared memory is disabled on this server; start it with `edgeslim serve --shared-memory`"
            " (ServerSettings.shared_memory=True) to pass tensors through /dev/shm"
        )
    return reg


@router.get("/v2/systemsharedmemory/status", summary="Every registered region", response_model=list[RegionStatus])
async def status_all(request: Request) -> list[dict[str, Any]]:
    reg = request.app.state.shared_memory
    return [] if reg is None else reg.status()


@router.get("/v2/systemsharedmemory/region/{name}/status", summary="One region", response_model=list[RegionStatus])
async def status_one(request: Request, name: str) -> list[dict[str, Any]]:
    return registry(request).status(name)


_REGISTER_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RegisterBody.model_json_schema()}},
    }
}


@router.post("/v2/systemsharedmemory/region/{name}/register", summary="Register a region",
             openapi_extra=_REGISTER_DOC)
async def register(request: Request, name: str) -> dict[str, Any]:
    # parsed here rather than as a body parameter: tritonclient sends the JSON without a Content-Type
    reg = registry(request)
    try:
        body = RegisterBody.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InputError("invalid register request: " + validation_message(exc.errors())) from None
    reg.register(name, body.key, body.offset, body.byte_size)
    return {}


@router.post("/v2/systemsharedmemory/region/{name}/unregister", summary="Unregister a region")
async def unregister_one(request: Request, name: str) -> dict[str, Any]:
    registry(request).unregister(name)
    return {}


@router.post("/v2/systemsharedmemory/unregister", summary="Unregister every region")
async def unregister_all(request: Request) -> dict[str, Any]:
    registry(request).unregister()
    return {}
