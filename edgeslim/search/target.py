"""Which device a search measures on: this host, a named board profile, or a remote edgeslim server.

The target decides the search space (a precision or a sparse format the target cannot run is never proposed)
and where latencies are measured. ``isa`` holds this host's CPU runtime to an older instruction set through
oneDNN's ``ONEDNN_MAX_CPU_ISA`` (read by OpenVINO's CPU plugin when the library loads), so that one machine can
show how the pick moves between CPU generations. Target names are those of :mod:`edgeslim.hardware` (a recipe's
``target:``): the name a search resolves is written into every candidate recipe, so the INT8 files it measures
and the chosen recipe's re-run use the same INT8 scheme.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError, ConfigError
from ..registry import did_you_mean

__all__ = ["ISAS", "SearchTarget", "apply_isa", "resolve_target"]

# oneDNN's names for ONEDNN_MAX_CPU_ISA (lower-case here), oldest first
ISAS = ("sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni", "avx512_core_amx")
# the cpu_info() ISA flags each cap still allows for INT8 / FP16 speed-ups
_INT8_FAST = {"avx512_vnni", "avx_vnni", "amx_int8"}
_FP16_FAST = {"avx512_fp16", "amx_fp16"}


@dataclass
class SearchTarget:
    """A resolved target.

    Attributes:
        name: the :mod:`edgeslim.hardware` target profile's name (``x86-avx2``, ``jetson-orin-nx``, ...); the
            ``target:`` of every candidate recipe, so the chosen recipe re-runs with the same INT8 scheme.
        kind: ``cpu``, ``gpu`` or ``jetson``.
        backend: the runtime backend candidates are measured with.
        precisions: precisions the target runs (``fp16`` only where it has fast FP16 kernels).
        sparse_2_4: 2:4 sparse kernels (TensorRT on Ampere / Orin).
        sparse_unstructured: kernels that skip unstructured zeros (none of the built-in targets' convolutions).
        url: the remote server, if any.
        isa: the oneDNN ISA cap in force, if any.
        info: what detection found (CPU model, ISA flags, GPU).
    """

    name: str
    kind: str
    backend: str
    precisions: tuple[str, ...]
    sparse_2_4: bool = False
    sparse_unstructured: bool = False
    url: str | None = None
    isa: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    token: str | None = field(default=None, repr=False)  # a remote target's bearer token; never written out

    def describe(self) -> str:
        cpu = (self.info.get("cpu") or {}).get("model")
        where = self.url or (f"this host ({cpu})" if cpu else "this host")
        return f"{self.name} via {self.backend} on {where}" + (f", ISA capped at {self.isa}" if self.isa else "")

    def to_dict(self) -> dict[str, Any]:
        isa = (self.info.get("cpu") or {}).get("isa") or {}
        return {"name": self.name, "kind": self.kind, "backend": self.backend, "precisions": list(self.precisions),
                "sparse_2_4": self.sparse_2_4, "sparse_unstructured": self.sparse_unstructured, "url": self.url,
                "isa_cap": self.isa, "cpu": (self.info.get("cpu") or {}).get("model"),
                "cpu_isa": sorted(k for k, v in isa.items() if v), "gpu": self.info.get("gpu")}


def apply_isa(isa: str | None) -> None:
    """Cap oneDNN (OpenVINO's CPU plugin) at ``isa`` for this process.

    oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when the CPU plugin first loads, so this must run before OpenVINO
    compiles anything in the process; afterwards a different cap is refused rather than silently ignored.
    """
    if isa is None:
        return
    low = isa.lower()
    if low not in ISAS:
        raise ConfigError(f"isa '{isa}' is not a oneDNN ISA.{did_you_mean(low, ISAS)} Known: {', '.join(ISAS)}")
    current = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if "openvino" in sys.modules and (current or "").lower() != low:
        raise ConfigError(
            f"isa '{isa}': OpenVINO is already loaded in this process, so oneDNN's ISA can no longer be capped;"
            " run the search in a fresh process (the edgeslim CLI does)"
        )
    os.environ["ONEDNN_MAX_CPU_ISA"] = low.upper()


def _check_remote(url: str, timeout_s: float, token: str | None = None) -> dict[str, Any]:
    """The remote server's metadata, plus its ``device`` answer (``/v2/edgeslim/device``) when it has one."""
    import json
    import urllib.error
    import urllib.request

    from ..devices.remote import _split_url
    from ..errors import require

    http = require("tritonclient.http", purpose="a remote search target (pip install 'tritonclient[http]')")
    host, ssl = _split_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        client = http.InferenceServerClient(url=host, ssl=ssl, connection_timeout=timeout_s,
                                            network_timeout=timeout_s)
        try:
            if not client.is_server_live():
                raise BackendError(f"remote target {url} answers but is not live; check `edgeslim serve` there")
            meta = dict(client.get_server_metadata(headers=headers))
        finally:
            client.close()
    except BackendError:
        raise
    except Exception as exc:  # connection refused, timeout, DNS, a wrong token (401)
        if "401" in str(exc) or "bearer token" in str(exc):
            raise BackendError(f"remote target {url} refused the token ({str(exc)[:200]}); pass the server's --token"
                               " as --token or EDGESLIM_TOKEN") from None
        raise BackendError(
            f"remote target {url} does not answer ({type(exc).__name__}: {str(exc)[:200]}); start `edgeslim serve"
            " --model-control explicit --token TOKEN --host 0.0.0.0` on the device and check the address and port"
        ) from None
    if "edgeslim_device" in (meta.get("extensions") or []):
        req = urllib.request.Request(f"{'https' if ssl else 'http'}://{host}/v2/edgeslim/device", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - the URL's scheme is ours
                meta["device"] = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BackendError(f"remote target {url}: GET /v2/edgeslim/device failed ({exc})") from None
    return meta


def _remote_target(spec: str, *, isa: str | None, backend: str | None, token: str | None,
                   timeout_s: float) -> "SearchTarget":
    """The target behind a remote edgeslim server: its own detection names the hardware profile (the INT8 scheme,
    the precisions), the backend it serves with is the one measured; it must load candidates (explicit control)."""
    from ..devices.targets import TARGETS

    meta = _check_remote(spec, timeout_s, token)
    dev = meta.get("device")
    who = f"{meta.get('name', 'server')} {meta.get('version', '')}".strip()
    if dev is None:
        raise ConfigError(
            f"remote target {spec} answers ({who}) but does not say what device it runs on (no edgeslim_device"
            " extension): a search needs an edgeslim server there, `edgeslim serve --model-control explicit`"
        )
    if dev.get("model_control") != "explicit":
        raise ConfigError(
            f"remote target {spec} ({dev.get('title')}) serves a fixed set of models: a search must load each"
            " candidate there; restart it with `edgeslim serve --model-control explicit --token TOKEN --host"
            " 0.0.0.0` (and pass the token here as --token or EDGESLIM_TOKEN)"
        )
    if isa is not None:
        raise ConfigError(f"isa '{isa}' caps this host's CPU runtime; a remote target runs its own: drop --isa")
    served = str(dev.get("backend") or "")
    if backend is not None and backend != served:
        raise ConfigError(
            f"remote target {spec} serves with backend '{served}', not '{backend}'; drop --backend or restart the"
            f" server with --backend {backend}"
        )
    name = TARGETS.canonical(str(dev.get("target")))
    profile = TARGETS.get(name)
    cpu = dev.get("cpu") or {}
    precisions, sparse_24 = _capabilities(profile, served, {k for k, v in (cpu.get("isa") or {}).items() if v})
    info = {"cpu": cpu, "gpu": (dev.get("gpus") or [None])[0], "remote": dev}
    return SearchTarget(name=name, kind=profile.kind, backend=served, precisions=precisions, sparse_2_4=sparse_24,
                        url=spec, info=info, device=str(dev.get("device") or "cpu"), token=token)


def _capabilities(profile: Any, backend: str, cpu_isa: set[str]) -> tuple[tuple[str, ...], bool]:
    """The precisions a target runs on ``backend`` and whether it has 2:4 sparse kernels there."""
    if profile.kind == "cpu":
        # INT8 runs on every x86 CPU (slower without VNNI/AMX: the search measures whether it pays);
        # FP16 only runs natively with AVX512-FP16 / AMX-FP16, elsewhere OpenVINO computes an FP16 IR in FP32
        return ("fp32", "int8") + (("fp16",) if cpu_isa & _FP16_FAST else ()), False
    if backend == "torch":  # PyTorch eager on CUDA: the precision the weights are in
        return ("fp32",), False
    precisions = ("fp32",) + (("fp16",) if profile.fp16 else ()) + (("int8",) if profile.int8 else ())
    # 2:4 sparse tensor cores run under TensorRT only
    return precisions, bool(profile.sparsity_2_4 and backend == "tensorrt")


def _cpu_targets(here: dict[str, Any]) -> dict[str, str | None]:
    """The CPU target names a search can measure on this host, each with the ISA cap it needs (None: none).

    Follows :mod:`edgeslim.hardware`: this CPU's own profile (``x86-vnni`` / ``x86-avx2`` / ``arm-cpu``), the
    generic ``x86-cpu`` on any x86 host (its INT8 scheme holds on every x86 CPU), and ``x86-avx2`` on a VNNI host
    held below VNNI (oneDNN capped at ``avx2``), which is how an AVX2 machine runs.
    """
    from ..hardware import cpu_target

    own = cpu_target(here.get("cpu") or {}).name
    out: dict[str, str | None] = {own: None}
    if own.startswith("x86-"):
        out["x86-cpu"] = None
        out["x86-avx2"] = None if own == "x86-avx2" else "avx2"
    return out


def _capped_name(name: str, isa: str | None) -> str:
    """The hardware target a capped x86 host runs as: below ``avx2_vnni`` it has no VNNI (INT8 scheme ``x86-avx2``)."""
    if isa is not None and name == "x86-vnni" and isa.lower() in ISAS and ISAS.index(isa.lower()) < ISAS.index(
            "avx2_vnni"):
        return "x86-avx2"
    return name


def resolve_target(spec: str = "auto", *, isa: str | None = None, backend: str | None = None,
                   timeout_s: float = 5.0, token: str | None = None) -> SearchTarget:
    """Resolve ``auto``, a target name from ``edgeslim devices``, or ``http(s)://host:port``.

    A URL is an edgeslim server on the device (``edgeslim serve --model-control explicit``): the target is what
    that server detects it runs on, measured with the backend it serves; ``token`` is its bearer token.

    The name is the :mod:`edgeslim.hardware` target this host is measured as, and the ``target:`` of every
    candidate recipe (it decides the INT8 scheme, :func:`edgeslim.hardware.int8_scheme`): ``auto`` is the host
    (``nvidia-gpu``, a Jetson board, or its CPU profile); an x86 host also answers to ``x86-cpu`` (the generic
    profile) and ``x86-avx2`` (a VNNI host is then capped at ``avx2``); a host with a GPU also to its CPU's names.

    Raises:
        UnknownNameError: an unknown target name (did-you-mean).
        BackendError: a remote target that does not answer.
        ConfigError: a named board that is not this host (measure it through its server), an ISA cap on a
            target that is not this host's CPU, or a remote server that cannot load candidates (model control off).
    """
    from ..devices.targets import TARGETS, detect

    if spec.startswith(("http://", "https://")) or (":" in spec and spec.split(":")[-1].isdigit()):
        return _remote_target(spec, isa=isa, backend=backend, token=token, timeout_s=timeout_s)
    here = detect()
    cpus = _cpu_targets(here)
    name = here["name"] if spec == "auto" else TARGETS.canonical(spec)
    if name != here["name"] and name not in cpus:
        here_too = ", ".join(n for n in dict.fromkeys([here["name"], *cpus]) if n != name)
        raise ConfigError(
            f"target '{spec}' ({TARGETS.get(name).title}) is not this host ({here['name']}: {here['why']}; it can"
            f" be measured as {here_too}); latency is measured on the target itself: run the search there, or give"
            " --target auto"
        )
    profile = TARGETS.get(name)
    if isa is not None and profile.kind != "cpu":
        raise ConfigError(f"isa '{isa}' caps a CPU runtime; target {name} is a {profile.kind}: drop --isa")
    needed = cpus.get(name)
    if needed is not None:  # x86-avx2 on a VNNI host: oneDNN held below VNNI
        if isa is None:
            isa = needed
        elif isa.lower() in ISAS and ISAS.index(isa.lower()) >= ISAS.index("avx2_vnni"):
            raise ConfigError(
                f"target {name} has no VNNI but isa '{isa}' allows it; give --isa {needed} (or lower), or drop --isa"
            )
    if spec == "auto":
        name = _capped_name(name, isa)
        profile = TARGETS.get(name)
    cpu_isa = {k for k, v in ((here.get("cpu") or {}).get("isa") or {}).items() if v}
    if isa is not None:
        # a cap below an extension removes it: sse41/avx/avx2 have no VNNI, AMX or FP16 arithmetic
        rank = ISAS.index(isa.lower()) if isa.lower() in ISAS else len(ISAS)
        if rank < ISAS.index("avx2_vnni"):
            cpu_isa -= _INT8_FAST | _FP16_FAST
    if profile.kind == "cpu":
        chosen = backend or profile.backend
    else:
        import importlib.util

        chosen = backend or (profile.backend if importlib.util.find_spec(profile.backend) else "torch")
    precisions, sparse_24 = _capabilities(profile, chosen, cpu_isa)
    return SearchTarget(name=name, kind=profile.kind, backend=chosen, precisions=precisions, sparse_2_4=sparse_24,
                        sparse_unstructured=False, isa=isa.lower() if isa else None, info=here,
                        device="cpu" if profile.kind == "cpu" else "cuda:0")
