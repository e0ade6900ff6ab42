"""TensorRT exporter: serialised engines (``tensorrt/model*.plan``) built from the artifact's ONNX files.

An engine only runs on the TensorRT version and GPU that built it, so the exporter also ALWAYS writes
``tensorrt/build.sh``: the equivalent ``trtexec`` command lines, to rebuild the engines on the target device
(a Jetson, a server) from the ONNX files that travel in the artifact. On a machine without a GPU or without the
``tensorrt`` package only that script is written and the missing capability is recorded as the exporter's error;
the other formats of the export complete.

Precisions:
    fp32: ``model.onnx``, no precision flag (TensorRT may still use TF32 on Ampere and newer).
    fp16: ``model.onnx`` with ``BuilderFlag.FP16`` / ``trtexec --fp16``. TensorRT 11 removed the flag (it builds
        strongly typed networks only); there the fp16 build is refused with that reason.
    int8: explicit quantization from the Q/DQ ``model_int8.onnx`` written by the onnx exporter, built as a
        strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` / ``trtexec --stronglyTyped``).
        No ``--int8`` and no calibrator: TensorRT's docs say explicit quantization needs no precision-control
        flags, and TensorRT 11 removed implicit (calibrated) INT8 and ``--int8`` altogether. The same command
        works on TensorRT 10 (Jetson Orin, JetPack 6).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_directory, atomic_write_bytes, atomic_write_text
from ..artifact import Manifest, ModelFile, finalize, load_manifest
from ..errors import ConfigError, EdgeslimError, ExportError
from .base import EXPORTERS, ExportContext, Exporter

ENGINE_DIR = "tensorrt"
BUILD_SCRIPT = f"{ENGINE_DIR}/build.sh"
#: engine file per precision, relative to the artifact
ENGINE_FILES = {"fp32": f"{ENGINE_DIR}/model.plan", "fp16": f"{ENGINE_DIR}/model_fp16.plan",
                "int8": f"{ENGINE_DIR}/model_int8.plan"}


@dataclass(frozen=True)
class EngineSettings:
    """How to build an engine.

    Args:
        min_batch, opt_batch, max_batch: the optimisation profile's batch sizes for a dynamic-batch ONNX
            (``opt`` is what TensorRT tunes kernels for: 1 for latency on an edge device).
        workspace_mb: ``MemoryPoolType.WORKSPACE`` limit in MiB.
        sparse_weights: let TensorRT use 2:4 structured-sparse kernels (``BuilderFlag.SPARSE_WEIGHTS``,
            ``--sparsity=enable``) on Ampere and newer; it only helps if the weights are 2:4 sparse.
        timing_cache: timing cache file to load before and save after the build (None: no cache). Keep it
            outside the artifact: a cache is specific to one GPU and TensorRT version, like the engine.
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 64
    workspace_mb: int = 1024
    sparse_weights: bool = False
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise ConfigError(
                f"TensorRT batch profile needs 1 <= min <= opt <= max; got min={self.min_batch}, "
                f"opt={self.opt_batch}, max={self.max_batch}"
            )
        if self.workspace_mb < 1:
            raise ConfigError(f"workspace_mb must be >= 1, got {self.workspace_mb}")


def format_shape(shape: Sequence[int]) -> str:
    """``(1, 3, 224, 224)`` -> ``"1x3x224x224"`` (trtexec's shape syntax)."""
    return "x".join(str(int(d)) for d in shape)


def profile_shapes(
    input_shape: Sequence[int], settings: EngineSettings = EngineSettings()
) -> dict[str, tuple[int, ...]] | None:
    """Optimisation-profile shapes ``{"min", "opt", "max"}`` for an NCHW input, or None for a static input.

    Args:
        input_shape: the ONNX input shape, ``[N, C, H, W]`` with ``-1`` (or any non-positive value) for a dynamic
            batch. Only the batch may be dynamic: image size is fixed by the artifact's preprocessing.

    Raises:
        ConfigError: not 4-D, or a dynamic C/H/W.
    """
    shape = [int(d) if isinstance(d, int) else -1 for d in input_shape]
    if len(shape) != 4:
        raise ConfigError(f"TensorRT export expects an NCHW input; got shape {list(input_shape)}")
    if any(d <= 0 for d in shape[1:]):
        raise ConfigError(
            f"input shape {list(input_shape)} has a dynamic channel/height/width; export the ONNX with a fixed"
            " image size (only the batch may be dynamic)"
        )
    if shape[0] > 0:
        return None
    chw = tuple(shape[1:])
    return {
        "min": (settings.min_batch, *chw),
        "opt": (settings.opt_batch, *chw),
        "max": (settings.max_batch, *chw),
    }


def trtexec_command(
    onnx: str,
    engine: str,
    *,
    input_name: str = "input",
    shapes: dict[str, Sequence[int]] | None = None,
    workspace_mb: int = 1024,
    fp16: bool = False,
    strongly_typed: bool = False,
    sparse_weights: bool = False,
    timing_cache: str | None = None,
) -> list[str]:
    """The ``trtexec`` command line equivalent to :func:`build_engine`, as an argv list.

    Args:
        onnx: ONNX file to build from (the Q/DQ ONNX for INT8).
        engine: where to save the engine.
        input_name: the network input the shapes apply to.
        shapes: ``{"min", "opt", "max"}`` from :func:`profile_shapes`; None for a static-shape ONNX (trtexec
            refuses explicit shapes for a static model).
        workspace_mb: workspace pool limit in MiB.
        fp16: add ``--fp16`` (TensorRT 10; removed in TensorRT 11).
        strongly_typed: add ``--stronglyTyped`` (explicit-quantization INT8: precisions come from the Q/DQ graph).
        sparse_weights: add ``--sparsity=enable``.
        timing_cache: add ``--timingCacheFile``.
    """
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if shapes is not None:
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            cmd.append(f"{flag}={input_name}:{format_shape(shapes[key])}")
    cmd.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if fp16:
        cmd.append("--fp16")
    if strongly_typed:
        cmd.append("--stronglyTyped")
    if sparse_weights:
        cmd.append("--sparsity=enable")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd.append("--skipInference")  # build and save only; benchmarking is the profiler's job
    return cmd


def build_script(commands: dict[str, list[str]]) -> str:
    """``tensorrt/build.sh``: one trtexec line per precision, run from the artifact directory."""
    lines = [
        "#!/bin/sh",
        "# Rebuild this artifact's TensorRT engines on the device that will run them: an engine only loads on the",
        "# TensorRT version and GPU that built it. Needs trtexec (TensorRT >= 10) on PATH; on Jetson it is",
        "# /usr/src/tensorrt/bin/trtexec. With edgeslim installed on the device, this does the same and records the",
        "# engines in manifest.json (hashes, TensorRT version, GPU) so edgeslim.runtime.load(..., backend='tensorrt')",
        "# finds them:  python -c \"from edgeslim.export.tensorrt import build_artifact_engines as b; b('.')\"",
        "set -e",
        'cd "$(dirname "$0")/.."',
    ]
    notes = {
        "fp32": "# fp32 (TensorRT may use TF32 on Ampere and newer)",
        "fp16": "# fp16: --fp16 exists up to TensorRT 10; TensorRT 11 removed it (use the fp32 or int8 engine there)",
        "int8": "# int8: explicit quantization from the Q/DQ ONNX as a strongly typed network; no --int8 and no\n"
        "# calibration (TensorRT 11 removed both; TensorRT 10 builds Q/DQ graphs without them too)",
    }
    for precision, cmd in commands.items():
        lines += ["", notes.get(precision, f"# {precision}"), shlex.join(cmd)]
    return "\n".join(lines) + "\n"


# -- the real build (needs tensorrt and a GPU) -------------------------------------------------------------------


def _builder(trt: Any, logger: Any) -> Any:
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:
        # Without a usable GPU TensorRT logs "CUDA initialization failure" and the constructor returns nullptr,
        # which the bindings raise as a TypeError.
        raise ExportError(
            f"TensorRT cannot build engines here: no usable CUDA GPU (CUDA initialisation failed: {exc}). "
            f"Build on the target device with {BUILD_SCRIPT} from the artifact"
        ) from exc
    if builder is None:  # pragma: no cover - older bindings return None instead of raising
        raise ExportError(f"trt.Builder could not be created (no usable CUDA GPU?); use {BUILD_SCRIPT} on the device")
    return builder


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    settings: EngineSettings = EngineSettings(),
    *,
    fp16: bool = False,
    strongly_typed: bool = False,
) -> dict[str, Any]:
    """Build a serialised engine from an ONNX file with the TensorRT Python API and write it atomically.

    Returns:
        What to record in ``ModelFile.extra``: TensorRT version, GPU name, compute capability, the profile,
        the settings and the build time.

    Raises:
        MissingDependencyError: tensorrt or cuda-python is not installed (names ``edgeslim[tensorrt]``).
        ExportError: no GPU; every ONNX parser error; an unsupported flag; the builder returned no engine.
    """
    from ..runtime.tensorrt import gpu_identity, import_cudart, import_tensorrt

    trt = import_tensorrt()
    import_cudart()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _builder(trt, logger)
    flags = 0
    if strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise ExportError(f"TensorRT {trt.__version__} has no strongly typed networks; INT8 Q/DQ needs TensorRT >= 10")
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    # Explicit batch is the only mode (and the default) from TensorRT 10 on: no EXPLICIT_BATCH flag.
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {Path(onnx_path).name}: " + " | ".join(errors or ["(no detail)"]))
    if network.num_inputs != 1:
        raise ExportError(f"{Path(onnx_path).name} has {network.num_inputs} inputs; edgeslim models have one")
    tensor = network.get_input(0)
    shapes = profile_shapes(tuple(tensor.shape), settings)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_mb) << 20)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (TensorRT 11 builds strongly typed networks "
                "only); use the fp32 or int8 engine"
            )
        if not getattr(builder, "platform_has_fast_fp16", True):
            raise ExportError("this GPU has no fast FP16; build fp32 or int8 instead")
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    cache_path = Path(settings.timing_cache).expanduser() if settings.timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {Path(onnx_path).name} (see the TensorRT log above)")
    atomic_write_bytes(plan_path, bytes(serialized))
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))

    return {
        "tensorrt_version": trt.__version__,
        **gpu_identity(0),
        "profile": {k: list(v) for k, v in shapes.items()} if shapes else None,
        "settings": asdict(settings),
        "fp16": fp16,
        "strongly_typed": strongly_typed,
        "build_seconds": round(seconds, 3),
    }


# -- the exporter plugin ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    precision: str
    onnx: str  # relative to the artifact
    engine: str
    fp16: bool
    strongly_typed: bool


def plan_jobs(ctx: ExportContext) -> tuple[list[_Job], list[tuple[str, str]]]:
    """Which engines to build from which ONNX file; and (precision, reason) for those that cannot be."""
    jobs, missing = [], []
    for precision in ("fp32", "fp16", "int8"):
        if not ctx.wants(precision):
            continue
        source = ctx.find("onnx", "int8" if precision == "int8" else "fp32")
        if source is None:
            want = "the Q/DQ INT8 ONNX (onnx exporter with int8)" if precision == "int8" else "the FP32 ONNX"
            missing.append((precision, f"TensorRT builds from {want}; add 'onnx' to the export formats"))
            continue
        jobs.append(_Job(precision, source.path, ENGINE_FILES[precision], fp16=precision == "fp16",
                         strongly_typed=precision == "int8"))
    return jobs, missing


def commands_for(jobs: list[_Job], ctx: ExportContext, settings: EngineSettings) -> dict[str, list[str]]:
    """The trtexec command of every job, with paths relative to the artifact directory."""
    shapes = profile_shapes(ctx.input_dims(), settings)
    return {
        j.precision: trtexec_command(
            j.onnx, j.engine, input_name=ctx.input_name, shapes=shapes, workspace_mb=settings.workspace_mb,
            fp16=j.fp16, strongly_typed=j.strongly_typed, sparse_weights=settings.sparse_weights,
            timing_cache=settings.timing_cache,
        )
        for j in jobs
    }


@EXPORTERS.register("tensorrt", aliases=("trt",))
class TensorRTExporter(Exporter):
    """TensorRT engines from the artifact's ONNX, plus ``tensorrt/build.sh`` to rebuild them on the device.

    Args:
        settings: profile, workspace, sparsity and timing cache (default :class:`EngineSettings`).
    """

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    after = ("onnx",)

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()

    def export(self, ctx: ExportContext) -> list[ModelFile]:
        jobs, missing = plan_jobs(ctx)
        for precision, reason in missing:
            ctx.errors.append({"exporter": self.name, "precision": precision, "error": reason})
        if not jobs:
            return []
        commands = commands_for(jobs, ctx, self.settings)
        # Written first and outside ctx.attempt, so it stays even when no engine can be built here.
        atomic_write_text(ctx.path(BUILD_SCRIPT), build_script(commands))
        os.chmod(ctx.directory / BUILD_SCRIPT, 0o755)

        try:  # one clear record instead of the same missing-GPU error per precision
            from ..runtime.tensorrt import import_cudart, import_tensorrt

            trt = import_tensorrt()
            import_cudart()
            _builder(trt, trt.Logger(trt.Logger.ERROR))
        except EdgeslimError as exc:
            ctx.errors.append({"exporter": self.name, "precision": ",".join(j.precision for j in jobs),
                               "error": f"{exc} (wrote {BUILD_SCRIPT} to build on the device)", "unavailable": True})
            return []

        files: list[ModelFile] = []
        for job in jobs:
            files += ctx.attempt(self.name, job.precision, lambda job=job: [self._build(ctx, job, commands)])
        return files

    def _build(self, ctx: ExportContext, job: _Job, commands: dict[str, list[str]]) -> ModelFile:
        info = build_engine(ctx.directory / job.onnx, ctx.path(job.engine), self.settings, fp16=job.fp16,
                            strongly_typed=job.strongly_typed)
        info.update({"source": job.onnx, "trtexec": shlex.join(commands[job.precision]), "script": BUILD_SCRIPT})
        return ModelFile(format="tensorrt", precision=job.precision, path=job.engine, extra=info)


def build_artifact_engines(
    artifact: str | os.PathLike,
    *,
    precisions: Sequence[str] | None = None,
    settings: EngineSettings | None = None,
) -> Manifest:
    """Build TensorRT engines for an existing artifact on this device and record them in its manifest.

    The on-device counterpart of ``tensorrt/build.sh``: engines come from the artifact's ONNX files (the Q/DQ one
    for int8), replace any earlier engine of the same precision, and the artifact is rewritten atomically with new
    hashes and this machine's TensorRT version and GPU. Needs no PyTorch.

    Args:
        artifact: the artifact directory.
        precisions: which engines to build (default: one per ONNX precision the artifact has; fp32 ONNX -> fp32).
        settings: profile, workspace, sparsity, timing cache.

    Raises:
        ArtifactError / IntegrityError: not an artifact, or modified files.
        ExportError: a precision without its ONNX source, or a failed build (no GPU, parser errors, ...).
    """
    directory = Path(artifact)
    manifest = load_manifest(directory)
    settings = settings or EngineSettings()
    onnx = {m.precision: m for m in manifest.models if m.format == "onnx"}
    wanted = list(precisions) if precisions is not None else [p for p in ("fp32", "int8") if p in onnx]
    shape = list(manifest.input.shape)
    if len(shape) != 4:
        raise ExportError(f"artifact input shape {shape} is not NCHW; TensorRT export needs [N, C, H, W]")
    ctx = ExportContext(model=None, directory=directory, input_shape=(shape[1], shape[2], shape[3]),
                        num_classes=len(manifest.classes), dynamic_batch=shape[0] <= 0, precisions=tuple(wanted),
                        written=list(onnx.values()), input_name=manifest.input.name)
    jobs, missing = plan_jobs(ctx)
    if missing:
        raise ExportError("; ".join(f"{p}: {why}" for p, why in missing))
    if not jobs:
        raise ExportError(f"no TensorRT engine to build for precisions {wanted}; the artifact has ONNX {sorted(onnx)}")
    commands = commands_for(jobs, ctx, settings)
    import shutil

    with atomic_directory(directory) as tmp:
        shutil.copytree(directory, tmp, dirs_exist_ok=True)
        (tmp / "manifest.json").unlink(missing_ok=True)
        built = []
        for job in jobs:
            info = build_engine(tmp / job.onnx, tmp / job.engine, settings, fp16=job.fp16,
                                strongly_typed=job.strongly_typed)
            info.update({"source": job.onnx, "trtexec": shlex.join(commands[job.precision]), "script": BUILD_SCRIPT})
            built.append(ModelFile(format="tensorrt", precision=job.precision, path=job.engine, extra=info))
        atomic_write_text(tmp / BUILD_SCRIPT, build_script(commands))
        os.chmod(tmp / BUILD_SCRIPT, 0o755)
        kept = [m for m in manifest.models if not (m.format == "tensorrt" and m.precision in {b.precision for b in built})]
        manifest = finalize(tmp, manifest.model_copy(update={"models": kept + built, "files": {}}))
    return manifest
