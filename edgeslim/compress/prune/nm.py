"""N:M semi-structured sparsity (2:4 for TensorRT's sparse tensor-core kernels on Ampere / Orin) and its checker.

Which weights form a group (TensorRT developer guide, "Structured Sparsity"; NVIDIA ASP ``sparse_masklib``):

- Conv weight ``[K, C, R, S]``: for each output channel ``k`` and each kernel position ``(r, s)``, every 4
  consecutive INPUT channels ``C`` hold at most 2 non-zeros. ASP permutes the weight to ``[R, S, K, C]`` and groups
  along ``C``. (Grouping the flattened ``C*R*S`` row in memory order would group along the kernel width instead,
  which TensorRT does not accept.) ``C`` is the per-group input width, so a depthwise conv (``C = 1``) is skipped.
- Linear / Gemm / MatMul: along the input (reduction) dimension: axis 1 of a torch Linear weight ``[out, in]`` and
  of an ONNX Gemm ``B`` with ``transB=1``; axis 0 of a Gemm ``B`` with ``transB=0`` and of a MatMul initializer
  ``[in, out]``.

Layers whose input dimension is not a multiple of M cannot follow the pattern and are left dense (listed in the
result's ``info["skipped"]``). Recipe: ``prune: {method: nm, n: 2, m: 4}``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Literal

import numpy as np
from pydantic import Field, model_validator

from ...errors import ConfigError
from .base import PRUNE_METHODS, LayerPruneConfig, PruneContext, PruneResult, dense_round_teacher, teacher_check

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .masks import MaskSet


class NM(LayerPruneConfig):
    """N:M semi-structured sparsity (2:4 for TensorRT's sparse tensor cores)."""

    method: Literal["nm"] = "nm"
    n: int = Field(default=2, ge=1, description="at most n non-zeros in every group of m")
    m: int = Field(default=4, ge=2, description="group size along the input dimension")

    @model_validator(mode="after")
    def _n_below_m(self) -> "NM":
        if self.n >= self.m:
            raise ValueError(
                f"n = {self.n}, m = {self.m}: N:M sparsity keeps at most n of every m weights, so n must be < m"
                " (2:4 is n: 2, m: 4)"
            )
        return self


def _check_nm(n: int, m: int) -> None:
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise ConfigError(f"n and m must be integers, got n={n!r}, m={m!r}")
    if m < 2 or n < 1 or n >= m:
        raise ConfigError(f"N:M = {n}:{m}: need 1 <= n < m (2:4 keeps 2 of every 4 weights)")


def _as_groups(w: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """View a weight as rows of ``m`` along its input dimension; returns the rows and the permuted shape."""
    if w.dim() == 2:  # Linear [out, in]
        return w.reshape(-1, m), tuple(w.shape)
    # Conv [K, C, *k] -> [K, *k, C]: groups run along C for each (k, r, s), as TensorRT requires
    p = w.movedim(1, -1).contiguous()
    return p.reshape(-1, m), tuple(p.shape)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest-magnitude weights of every group of ``m`` (ties: the first ones).

    Raises:
        ConfigError: bad N:M, or the input dimension (``weight.shape[1]``) is not a multiple of ``m``.
    """
    import torch

    _check_nm(n, m)
    if weight.dim() < 2 or weight.shape[1] % m:
        raise ConfigError(f"weight of shape {tuple(weight.shape)}: its input dimension is not a multiple of {m}")
    rows, shape = _as_groups(weight.detach().abs().float().cpu(), m)
    keep = torch.zeros_like(rows, dtype=torch.bool)
    # stable descending order by magnitude: the position breaks ties, so the mask is deterministic
    order = torch.argsort(-rows, dim=1, stable=True)[:, :n]
    keep.scatter_(1, order, True)
    keep = keep.reshape(shape)
    return keep if weight.dim() == 2 else keep.movedim(-1, 1).contiguous()


def nm_violations(weight: torch.Tensor | np.ndarray, n: int = 2, m: int = 4, *, axis: int = 1) -> tuple[int, int]:
    """``(groups with more than n non-zeros, groups)`` of a weight whose input dimension is ``axis``."""
    import torch

    w = torch.from_numpy(np.array(weight)) if not isinstance(weight, torch.Tensor) else weight.detach().cpu()
    w = w.movedim(axis, -1)
    if w.shape[-1] % m:
        raise ConfigError(f"input dimension {w.shape[-1]} is not a multiple of {m}")
    nz = (w.reshape(-1, m) != 0).sum(dim=1)
    return int((nz > n).sum()), int(nz.numel())


def nm_layers(masks: MaskSet, model: nn.Module, m: int = 4) -> tuple[list[str], list[dict[str, Any]]]:
    """Split the layers of ``masks`` into those that can take an N:M pattern and the skipped ones (from shapes).

    Returns:
        ``(names, skipped)``; one ``{"name", "shape", "reason"}`` per skipped layer.
    """
    names: list[str] = []
    skipped: list[dict[str, Any]] = []
    for name in masks.names:
        w = model.get_submodule(name).weight
        if w.dim() < 2 or w.shape[1] % m:
            why = "depthwise (1 input channel per group)" if w.dim() > 2 and w.shape[1] == 1 else (
                f"input dimension {w.shape[1] if w.dim() > 1 else 1} is not a multiple of {m}")
            skipped.append({"name": name, "shape": list(w.shape), "reason": why})
        else:
            names.append(name)
    return names, skipped


def _require_layers(names: list[str], skipped: list[dict[str, Any]], n: int, m: int) -> None:
    if not names:
        raise ConfigError(
            f"no prunable layer can take {n}:{m} sparsity (every input dimension is 1 or not a multiple of {m}):"
            f" {', '.join(s['name'] for s in skipped)}"
        )


def apply_nm(masks: MaskSet, model: nn.Module, n: int = 2, m: int = 4) -> tuple[MaskSet, list[dict[str, Any]]]:
    """N:M masks by magnitude for the layers of ``masks`` that can take the pattern; the others are dropped.

    Returns:
        The new masks (applied to ``model``) and one ``{"name", "shape", "reason"}`` per skipped layer.

    Raises:
        ConfigError: bad N:M, or no masked layer can take the pattern.
    """
    from .masks import MaskSet

    _check_nm(n, m)
    names, skipped = nm_layers(masks, model, m)
    _require_layers(names, skipped, n, m)
    out = MaskSet({name: nm_mask(model.get_submodule(name).weight, n, m) for name in names})
    out.apply(model)
    return out, skipped


@PRUNE_METHODS.register(NM, aliases=("semi_structured",))
@teacher_check(dense_round_teacher)
def nm(cfg: NM, ctx: PruneContext) -> PruneResult:
    """Dense round, then ``n``:``m`` masks by magnitude kept through masked fine-tuning.

    Raises:
        ConfigError: N >= M, or no layer can take the pattern (checked on W0 before any training).
    """
    from .flow import train_dense_then_pruned

    p = cfg
    _check_nm(p.n, p.m)
    _require_layers(*nm_layers(ctx.make_masks(ctx.model, cfg), ctx.model, p.m), p.n, p.m)  # fail before training

    def prune(model: nn.Module, masks: MaskSet) -> tuple[nn.Module, MaskSet, dict[str, Any]]:
        new, skipped = apply_nm(masks, model, p.n, p.m)
        return model, new, {"n": p.n, "m": p.m, "layers": new.names, "skipped": skipped}

    return train_dense_then_pruned(ctx, cfg, prune)


# -- the exported-model checker -----------------------------------------------------------------------------------


def check_nm_onnx(onnx_path: str | os.PathLike, n: int = 2, m: int = 4, *,
                  required: Iterable[str] = ()) -> dict[str, Any]:
    """Verify the N:M pattern in the weight initializers of an ONNX model.

    Checks the weight of every Conv (groups along input channels per output channel and kernel position), Gemm
    (``B``'s input axis per ``transB``) and MatMul with an initializer second input (axis 0). A weight reached
    through a ``DequantizeLinear`` (Q/DQ INT8 models) is checked on its integer initializer (zero point 0 keeps
    zeros zero).

    Args:
        onnx_path: the ``.onnx`` file.
        n, m: at most ``n`` non-zeros per group of ``m``.
        required: initializer or node names that must follow the pattern (e.g. the layers that were pruned).

    Returns:
        ``{"n", "m", "layers": [{"node", "op", "initializer", "shape", "axis", "groups", "violations", "sparse"}],
        "sparse": [initializer names that follow the pattern], "dense": [... that do not], "skipped": [{...,
        "reason"}], "ok": bool}``; ``ok`` is true when every ``required`` layer follows the pattern (and, without
        ``required``, when at least one layer does).
    """
    import onnx
    from onnx import numpy_helper

    _check_nm(n, m)
    model = onnx.load(str(onnx_path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: node for node in g.node for o in node.output}
    consts = {node.output[0]: node for node in g.node if node.op_type == "Constant"}

    def weight_of(name: str) -> tuple[str, np.ndarray] | None:
        if name in inits:
            return name, numpy_helper.to_array(inits[name])
        if name in consts:
            attr = next((a for a in consts[name].attribute if a.name == "value"), None)
            return (name, numpy_helper.to_array(attr.t)) if attr is not None else None
        prod = producers.get(name)
        if prod is not None and prod.op_type in ("DequantizeLinear", "Identity") and prod.input:
            return weight_of(prod.input[0])
        return None

    layers: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        found = weight_of(node.input[1])
        if found is None:
            continue
        init_name, w = found
        if node.op_type == "Conv":
            axis = 1
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0
        else:
            axis = 0
        row = {"node": node.name, "op": node.op_type, "initializer": init_name, "shape": list(w.shape), "axis": axis}
        if w.ndim < 2 or w.shape[axis] % m:
            width = w.shape[axis] if w.ndim > 1 else 1
            skipped.append({**row, "reason": f"input dimension {width} is not a multiple of {m}"})
            continue
        bad, groups = nm_violations(w, n, m, axis=axis)
        layers.append({**row, "groups": groups, "violations": bad, "sparse": bad == 0})
    sparse = [r["initializer"] for r in layers if r["sparse"]]
    dense = [r["initializer"] for r in layers if not r["sparse"]]
    req = list(required)
    by_name = {r["initializer"]: r for r in layers} | {r["node"]: r for r in layers}
    missing = [x for x in req if x not in by_name]
    ok = (not missing and all(by_name[x]["sparse"] for x in req)) if req else bool(sparse)
    return {"n": n, "m": m, "layers": layers, "sparse": sparse, "dense": dense, "skipped": skipped,
            "missing": missing, "ok": ok}
