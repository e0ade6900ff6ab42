"""Latency on the target, measured before any training, and a per-layer latency model calibrated on it.

Architecture latency does not depend on the weights: a candidate is measured by pruning a random-weight copy of
the base model, exporting it through the same exporters the pipeline uses (so the graph is the deployed one) and
timing it with :func:`edgeslim.devices.profiler.profile_backend`. The runtime's own per-layer counters (OpenVINO
``PERF_COUNT`` + ``get_profiling_info()``, ONNX Runtime's profiler) give the time of every layer; the
:class:`LatencyModel` fits seconds per MAC per layer kind on them, is calibrated against the end-to-end runs, and
reports its own error against measurement, so the search can skip measuring candidates it predicts to be far
over the budget. TensorRT layer timings (``IProfiler``) are read by :mod:`edgeslim.runtime.tensorrt` on a GPU host.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..recipe import Recipe

__all__ = ["ArchMeasurement", "LatencyModel", "export_architecture", "layer_kind", "measure_architecture"]

# layer kinds the latency model fits one seconds-per-MAC coefficient for
KINDS = ("conv", "dw", "pw", "fc")


@dataclass
class ArchMeasurement:
    """What one architecture measured on the target."""

    p90_ms: float
    median_ms: float
    size_mb: float
    macs: dict[str, float]  # kind -> MACs (one sample)
    layers: list[dict[str, Any]] = field(default_factory=list)  # runtime counters: name, type, kind, ms
    layer_sum_ms: float | None = None
    seconds: float = 0.0
    pid: int = 0
    # the search's dense architecture timed in the same window (side by side), when one was given
    reference_p90_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"p90_ms": self.p90_ms, "median_ms": self.median_ms, "size_mb": self.size_mb, "macs": self.macs,
                "layers": self.layers, "layer_sum_ms": self.layer_sum_ms, "seconds": self.seconds, "pid": self.pid,
                "reference_p90_ms": self.reference_p90_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchMeasurement":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def layer_kind(module: Any) -> str | None:
    """``conv`` / ``dw`` (depthwise) / ``pw`` (1x1) / ``fc`` for a torch layer, None for others."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return "fc"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "dw"
        if module.kernel_size == (1, 1):
            return "pw"
        return "conv"
    return None


def _runtime_kind(exec_type: str, node_type: str) -> str:
    """The kind of an OpenVINO layer (:meth:`OpenVINOBackend.classify_layer <edgeslim.runtime.openvino.OpenVINOBackend.classify_layer>`)."""
    from ..runtime import BACKENDS

    return BACKENDS.get("openvino").classify_layer({"exec": exec_type, "type": node_type})


def macs_by_kind(model: Any, shape: tuple[int, ...]) -> dict[str, float]:
    """MACs of one sample per layer kind (forward hooks on Conv2d / Linear)."""
    import torch

    totals = {k: 0.0 for k in KINDS}
    hooks = []

    def hook(kind: str):
        def fn(m: Any, inp: Any, out: Any) -> None:
            if kind == "fc":
                totals[kind] += float(m.in_features * m.out_features)
            else:
                k = m.kernel_size[0] * m.kernel_size[1]
                totals[kind] += float(out.shape[2] * out.shape[3] * m.out_channels * (m.in_channels // m.groups) * k)
        return fn

    for m in model.modules():
        kind = layer_kind(m)
        if kind is not None:
            hooks.append(m.register_forward_hook(hook(kind)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *shape[1:])))
    finally:
        for h in hooks:
            h.remove()
    return totals


def candidate_channel_plan(base: Recipe, candidate: dict[str, Any], num_classes: int) -> Any:
    """What channel pruning as ``candidate`` says would do to each layer of the base model
    (:func:`edgeslim.compress.prune.structured.channel_plan`), or None for a choice that prunes no channels."""
    import torch

    from ..compress.prune import Structured
    from ..compress.prune.structured import channel_plan, kept_whole
    from ..compress.sources import load_pretrained, replace_head
    from .space import prune_config

    cfg = prune_config(candidate["prune"], base, candidate.get("stage_ratios"))
    if not isinstance(cfg, Structured) or not (cfg.ratio > 0 or cfg.stage_ratios):
        return None
    src = load_pretrained(base.model.source, arch=base.model.arch, pretrained=False)
    model = replace_head(src.model, num_classes).eval()
    size = int(candidate["image_size"] or src.preprocessing.crop)
    return channel_plan(model, torch.zeros((1, 3, size, size)), ratio=cfg.ratio, round_to=cfg.round_to,
                        ignored_layers=kept_whole(model, cfg, base.train.freeze),
                        stage_ratios=cfg.stage_ratios, scope=cfg.scope)


def build_candidate_model(base: Recipe, candidate: dict[str, Any], num_classes: int) -> tuple[Any, tuple[int, ...]]:
    """A random-weight copy of the base model, pruned as ``candidate`` says; returns ``(model, input shape)``.

    The candidate's method config (:func:`edgeslim.search.space.prune_config`) is applied with the pruning
    package's own functions (Torch-Pruning for channels, the N:M and magnitude masks), so the structure is the one
    the pipeline would produce; only the weights (random here) differ.
    """
    import torch

    from ..compress.prune import NM, LayerPruneConfig, OneShot, Structured
    from ..compress.prune.base import mask_options
    from ..compress.prune.masks import MaskSet
    from ..compress.prune.nm import apply_nm
    from ..compress.prune.reconstruct import prune_hidden_widths
    from ..compress.prune.structured import frozen_refittable, kept_whole, prune_channels
    from ..compress.sources import load_pretrained, replace_head
    from .space import prune_config

    torch.manual_seed(0)
    src = load_pretrained(base.model.source, arch=base.model.arch, pretrained=False)
    model = replace_head(src.model, num_classes).eval()
    size = int(candidate["image_size"] or src.preprocessing.crop)
    shape = (1, 3, size, size)
    cfg = prune_config(candidate["prune"], base, candidate.get("stage_ratios"))
    if isinstance(cfg, Structured) and cfg.frozen_ratio:  # as training prunes: the frozen layers' hidden widths
        prune_hidden_widths(model, torch.zeros(shape), ratio=cfg.frozen_ratio, round_to=cfg.round_to,
                            allowed=frozen_refittable(model, cfg, base.train.freeze), stage_ratios=cfg.stage_ratios)
    if isinstance(cfg, Structured) and (cfg.ratio > 0 or cfg.stage_ratios):
        ign = kept_whole(model, cfg, base.train.freeze)  # as training prunes: frozen layers whole
        prune_channels(model, torch.zeros(shape), ratio=cfg.ratio, scope=cfg.scope, round_to=cfg.round_to,
                       iterative_steps=cfg.iterative_steps, importance=cfg.importance, ignored_layers=ign,
                       stage_ratios=cfg.stage_ratios)
    elif isinstance(cfg, NM):
        apply_nm(MaskSet.for_model(model, **mask_options(cfg)), model, cfg.n, cfg.m)
    elif isinstance(cfg, OneShot):
        masks = MaskSet.for_model(model, **mask_options(cfg))
        masks.prune_to(model, cfg.sparsity, scope=cfg.scope)
        masks.apply(model)
    elif isinstance(cfg, LayerPruneConfig) and not isinstance(cfg, Structured):
        raise ConfigError(f"prune choice '{candidate['prune']}': the search builds no architecture for method"
                          f" '{cfg.method}'")
    return model, shape


def base_arch(base: Recipe) -> str:
    """The architecture id of the base recipe's model (what the torch backend rebuilds)."""
    from ..compress.sources import load_pretrained

    return load_pretrained(base.model.source, arch=base.model.arch, pretrained=False).arch


def _random_calibration(shape: tuple[int, ...], n: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((min(8, n), *shape[1:])).astype(np.float32) for _ in range(max(1, n // 8))]


def _layer_rows(backend: Any, shape: tuple[int, ...], runs: int = 20) -> list[dict[str, Any]]:
    """The runtime's per-layer times (:meth:`edgeslim.runtime.base.Backend.layer_times`: OpenVINO ``PERF_COUNT``,
    ONNX Runtime's profiler, TensorRT's ``IProfiler``) on the loaded file, each row with the kind the model fits,
    as the runner classifies its own rows (``Backend.classify_layer``)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    classify = type(backend).classify_layer
    return [{**r, "kind": classify(r)} for r in backend.layer_times({backend.inputs[0].name: x}, runs=runs)]


def _tensorrt_kind(name: str) -> str:
    """The kind of a TensorRT engine layer from its name (``TensorRTBackend.classify_layer``)."""
    from ..runtime import BACKENDS

    return BACKENDS.get("tensorrt").classify_layer({"name": name})


def _onnx_kind(op: str, node: str) -> str:
    """The kind of an ONNX Runtime node from its op type (``OnnxRuntimeBackend.classify_layer``)."""
    from ..runtime import BACKENDS

    return BACKENDS.get("onnxruntime").classify_layer({"type": op, "name": node})


def export_architecture(base: Recipe, candidate: dict[str, Any], directory: Path, *, backend: str, num_classes: int,
                        float_scope: list[str] = (), target: str | None = None
                        ) -> tuple[Path, dict[str, float], float, tuple[int, ...]]:
    """Export a candidate's random-weight architecture (:func:`build_candidate_model`) into ``directory`` as it will
    deploy on ``backend``; returns ``(file, MACs by kind, file size in bytes, batch-1 input shape)``.

    INT8 candidates are quantized with NNCF (PTQ) on random calibration data, in the INT8 scheme of ``target``
    (a name from :mod:`edgeslim.hardware`; default: the base recipe's ``target``): the graph (which layers run
    INT8, which stay in float) is the deployed one; only the scales differ, which does not change the kernels'
    speed.
    """
    from ..artifact import Manifest, Preprocessing, TensorInfo
    from ..compress.quant import PTQ, NoQuantization
    from ..export import export_artifact
    from ..recipe import ExportSection
    from ..runtime import file_format
    from .space import export_formats

    model, shape = build_candidate_model(base, candidate, num_classes)
    macs = macs_by_kind(model, shape)
    precision = candidate["precision"]
    formats = export_formats(backend)  # an unknown backend: UnknownNameError naming the registered ones
    # exported as the candidate will deploy: a dynamic batch axis when the recipe's export has one (OpenVINO runs a
    # fixed-batch INT8 graph 10-25 % faster at batch 1 here, which a fixed-batch measurement would promise wrongly)
    dynamic = bool(base.export.dynamic_batch)
    batch = -1 if dynamic else 1
    manifest = Manifest(
        name="search-arch", classes=[str(i) for i in range(num_classes)], critical=[], arch=base_arch(base),
        input=TensorInfo(name="input", shape=[batch, 3, shape[2], shape[3]]),
        outputs=[TensorInfo(name="logits", shape=[batch, num_classes])],
        preprocessing=Preprocessing(resize=shape[2], crop=shape[2]),
    )
    qcfg = PTQ(calibration_size=16, ignored_scope=list(float_scope)) if precision == "int8" else NoQuantization()
    man = export_artifact(model, directory, manifest, formats=formats, precisions=[precision],
                          calibration=_random_calibration(shape) if precision == "int8" else None,
                          validation=None, export_cfg=ExportSection(formats=formats, dynamic_batch=dynamic),
                          quantize_cfg=qcfg, target=target or base.target)
    fmt = file_format(backend)
    mf = next((m for m in man.models if m.format == fmt and m.precision == precision), None)
    if mf is None:
        raise ConfigError(f"the exporters wrote no {fmt} {precision} file for candidate {candidate}"
                          f" ({'; '.join(str(e) for e in man.validation.get('errors', []))})")
    path = Path(directory) / mf.path
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    return path, macs, float(size), shape


def paired_window(pcfg: Any) -> dict[str, int]:
    """``rounds`` / ``calls`` / ``warmup`` of a side-by-side window (:func:`edgeslim.devices.measure.paired_latency`)
    with at least the calls of the profiler window ``pcfg`` per file, in 10 turns."""
    rounds = 10
    return {"rounds": rounds, "calls": max(5, -(-pcfg.iterations // rounds)), "warmup": max(1, pcfg.warmup)}


def measure_architecture(base: Recipe, candidate: dict[str, Any], *, backend: str, num_classes: int,
                         iterations: int = 50, seconds: float = 0.5, threads: int | None = None,
                         layers: bool = True, float_scope: list[str] = (), device: str = "cpu",
                         target: str | None = None, site: Any = None,
                         reference: tuple[Path, str] | None = None) -> ArchMeasurement:
    """Measure a candidate's architecture on the target: random weights, the deployed export, the profiler.

    ``site`` (:mod:`edgeslim.search.site`) is where the file runs: None or a local site times it in this process
    and reads the runtime's per-layer counters; a remote site uploads it to the device's server and times it there
    as ``profile --remote`` does (the server does not expose per-layer counters, so remote measurements give the
    latency model no points and every candidate is measured).

    ``reference`` (an artifact directory and precision: the search's dense architecture) is timed side by side with
    the candidate (:func:`edgeslim.devices.measure.paired_latency`), locally only; its p90 in the same window is
    returned as ``reference_p90_ms``, so the search can take the host's drift out of every measurement. The file
    itself is exported by :func:`export_architecture`.
    """
    from ..devices.profiler import ProfileConfig, profile_backend
    from ..runtime import load

    t0 = time.perf_counter()
    precision = candidate["precision"]
    ref_p90 = None
    with tempfile.TemporaryDirectory(prefix="edgeslim-arch-") as tmp:
        art = Path(tmp) / "a"
        _, macs, size, shape = export_architecture(base, candidate, art, backend=backend, num_classes=num_classes,
                                                   float_scope=float_scope, target=target)
        pcfg = ProfileConfig(warmup=5, iterations=iterations, seconds=seconds, throughput=False)
        rows: list[dict[str, Any]] = []
        if site is not None and site.remote:
            res = site.latency(art, precision, pcfg)
            layers = False
        else:
            with load(art, backend=backend, precision=precision, device=device, threads=threads) as pred:
                if reference is not None:
                    from ..devices.measure import paired_latency

                    with load(reference[0], backend=backend, precision=reference[1], device=device,
                              threads=threads) as ref:
                        res, ref_res = paired_latency([pred.backend, ref.backend], **paired_window(pcfg))
                    ref_p90 = float(ref_res["latency_ms"]["p90"])
                else:
                    res = profile_backend(pred.backend, batch=1, cfg=pcfg)
                # per-layer counters from the runner itself (OpenVINO, ONNX Runtime, TensorRT); a runner without
                # them (torch: torch.profiler is not read) gives the latency model no points and every candidate is
                # measured
                if layers and pred.backend.has_layer_times():
                    rows = _layer_rows(pred.backend, shape)
    lat = res["latency_ms"]
    return ArchMeasurement(
        p90_ms=float(lat["p90"]), median_ms=float(lat["median"]), size_mb=size / 1e6, macs=macs, layers=rows,
        layer_sum_ms=float(sum(r["ms"] for r in rows)) if rows else None, seconds=time.perf_counter() - t0,
        pid=os.getpid(), reference_p90_ms=ref_p90,
    )


class LatencyModel:
    """Per-layer latency model: ``ms = sum_kind a_kind * MACs_kind + b``, fitted per precision.

    The per-kind times come from the runtime's per-layer counters of the measured architectures (their sum per
    kind), so the fit sees layer times, not only totals; ``b`` (the layers that are not conv / fc, plus per-call
    overhead) and a final scale are calibrated against the end-to-end p90 of the same runs. Error against
    measurement is reported leave-one-out, so it is the error on an architecture the model has not seen.
    """

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[dict[str, float], dict[str, float], float]]] = {}

    def add(self, precision: str, m: ArchMeasurement) -> None:
        per_kind = {k: 0.0 for k in (*KINDS, "other")}
        for r in m.layers:
            per_kind[r["kind"] if r["kind"] in per_kind else "other"] += r["ms"]
        self.points.setdefault(precision, []).append((m.macs, per_kind, m.p90_ms))

    @staticmethod
    def _fit(pts: list[tuple[dict[str, float], dict[str, float], float]]) -> tuple[dict[str, float], float, float]:
        coef = {}
        for k in KINDS:  # seconds per MAC of this kind: total counter time over total MACs (a robust ratio)
            macs = sum(p[0].get(k, 0.0) for p in pts)
            coef[k] = sum(p[1].get(k, 0.0) for p in pts) / macs if macs > 0 else 0.0
        layer_pred = np.array([sum(coef[k] * p[0].get(k, 0.0) for k in KINDS) for p in pts])
        other = np.array([p[1].get("other", 0.0) for p in pts])
        e2e = np.array([p[2] for p in pts])
        # calibration against end to end: e2e ~ scale * conv/fc prediction + offset (the other layers and the
        # per-call overhead); least squares, with the offset at the mean of the rest when one point is all we have
        if len(pts) >= 2 and np.ptp(layer_pred) > 0:
            scale, offset = np.polyfit(layer_pred, e2e, 1)
        else:
            scale, offset = 1.0, float(np.mean(e2e - layer_pred)) if len(pts) else float(other.mean() if len(other) else 0)
        return coef, float(scale), float(offset)

    def predict(self, precision: str, macs: dict[str, float]) -> float | None:
        pts = self.points.get(precision) or []
        if len(pts) < 2:
            return None
        coef, scale, offset = self._fit(pts)
        return scale * sum(coef[k] * macs.get(k, 0.0) for k in KINDS) + offset

    def error(self) -> dict[str, Any]:
        """Leave-one-out relative error per precision: ``{"fp32": {"n", "mape", "max"}}``."""
        out: dict[str, Any] = {}
        for prec, pts in self.points.items():
            if len(pts) < 3:
                out[prec] = {"n": len(pts), "mape": None, "max": None}
                continue
            errs = []
            for i in range(len(pts)):
                rest = pts[:i] + pts[i + 1:]
                coef, scale, offset = self._fit(rest)
                pred = scale * sum(coef[k] * pts[i][0].get(k, 0.0) for k in KINDS) + offset
                errs.append(abs(pred - pts[i][2]) / pts[i][2])
            out[prec] = {"n": len(pts), "mape": float(np.mean(errs)), "max": float(np.max(errs))}
        return out


def layer_table(m: ArchMeasurement, top: int = 10) -> list[dict[str, Any]]:
    """The slowest runtime layers of a measurement."""
    return sorted(m.layers, key=lambda r: -r["ms"])[:top]

