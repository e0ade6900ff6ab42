"""The ``search:`` recipe section: what the budget search may change and the budgets a pick must meet."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SearchSection"]


class SearchSection(BaseModel):
    """Budgets and knobs of ``edgeslim search`` (see :func:`edgeslim.search.search`).

    Budgets (every one optional, at least one of latency / throughput is needed by the search itself):

    - ``latency_ms``: batch-1 p90 latency on the target, in ms; or ``throughput``: images/s at batch 1; or
      ``latency_fraction``: p90 at most this fraction of the dense model's (0.5: twice as fast), the dense
      architecture timed beside every candidate so that the host's drift cancels (a local target only).
    - ``max_critical_fn``: most critical-class false negatives on val at the calibrated threshold; or
      ``max_critical_fnr`` at ``at_fpr`` (the critical FNR on val when the threshold flags ``at_fpr`` of the
      non-critical val samples).
    - ``max_extra_critical_fn`` / ``max_extra_critical_fnr``: the same, relative to the dense reference on val
      (``0``: no more missed critical cases than dense); combinable with the absolute forms.
    - ``max_top1_drop``: largest val top-1 drop against the dense model (absolute, 0.003 = 0.3 point).
    - ``max_size_mb``: largest deployed model file.
    - ``time_budget_s``: wall time of the whole search.

    The space (choices the search may combine; each is filtered by what the target can run):
    ``ratios`` (structured channel ratio, 0 = dense) and ``allocations`` (uniform, or per stage from measured
    sensitivity), ``sparsities`` (unstructured, only on targets with sparse
    kernels), ``precisions``, ``image_sizes`` (empty: the base recipe's only), ``gammas`` (the class-dependent
    weight; empty: the base recipe's only).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    target: str = Field(default="auto", description="auto, a name from `edgeslim devices`, or http://host:port")
    isa: str | None = Field(
        default=None, description="hold the CPU runtime to an older instruction set (oneDNN ONEDNN_MAX_CPU_ISA), "
        "e.g. sse41 or avx2; None: the host's own",
    )
    backend: str | None = Field(default=None, description="runtime backend on the target (None: the target's)")
    latency_ms: float | None = Field(default=None, gt=0, description="batch-1 p90 latency budget, ms")
    throughput: float | None = Field(default=None, gt=0, description="or a batch-1 throughput budget, images/s")
    latency_fraction: float | None = Field(
        default=None, gt=0, le=1, description="or a p90 budget as a fraction of the dense architecture's, timed side by"
        " side")
    max_critical_fn: int | None = Field(default=None, ge=0, description="most critical FN on val")
    max_critical_fnr: float | None = Field(default=None, ge=0, le=1, description="or most critical FNR on val ...")
    max_extra_critical_fn: int | None = Field(
        default=None, ge=0, description="most critical FN on val above the dense reference's (0: no more than dense)")
    max_extra_critical_fnr: float | None = Field(
        default=None, ge=0, le=1, description="or most critical FNR at at_fpr on val above the dense reference's")
    at_fpr: float = Field(default=0.05, gt=0, lt=1, description="... at this critical FPR")
    max_top1_drop: float = Field(default=0.01, ge=0, le=1, description="largest val top-1 drop against dense")
    max_size_mb: float | None = Field(default=None, gt=0, description="largest deployed model file, MB")
    time_budget_s: float = Field(default=1800.0, gt=0, description="wall time of the whole search")
    trials: int = Field(default=20, ge=1, description="most candidates fine-tuned")
    fine_tune_epochs: int = Field(default=1, ge=0, description="epochs of each candidate's short fine-tune")
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.3, 0.5, 0.6, 0.7])
    allocations: list[Literal["uniform", "sensitivity"]] = Field(
        default_factory=lambda: ["uniform", "sensitivity"],
        description="how a channel ratio is spread over the stages: the same in each (uniform), or per stage from "
        "each stage's measured sensitivity on the dense reference, at the same mean ratio",
    )
    sensitivity: Literal["critical", "mean"] = Field(
        default="critical", description="what the per-stage allocation measures when a stage is pruned: the val loss"
        " of the critical classes' samples, or the mean val loss of all samples",
    )
    sparsities: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=lambda: ["fp32", "fp16", "int8"])
    image_sizes: list[int] = Field(default_factory=list)
    gammas: list[float] = Field(default_factory=list)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    storage: str | None = Field(default=None, description="Optuna storage URL (default: sqlite in the out dir)")
    study: str | None = Field(default=None, description="study name (default: from the recipe)")
    measure_iterations: int = Field(default=50, ge=5, description="timed calls per latency measurement")
    measure_seconds: float = Field(default=0.5, ge=0, description="and at least this long")
    threads: int | None = Field(default=None, gt=0, description="runtime threads (None: the backend's default)")
    seed: int = 0

    @model_validator(mode="after")
    def _one_each(self) -> "SearchSection":
        given = [n for n in ("latency_ms", "throughput", "latency_fraction") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one latency budget, not {' and '.join(given)}")
        if self.max_critical_fn is not None and self.max_critical_fnr is not None:
            raise ValueError("give max_critical_fn or max_critical_fnr (at at_fpr), not both")
        if self.max_extra_critical_fn is not None and self.max_extra_critical_fnr is not None:
            raise ValueError("give max_extra_critical_fn or max_extra_critical_fnr (at at_fpr), not both")
        for name in ("ratios", "sparsities"):
            bad = [r for r in getattr(self, name) if not 0 <= r < 1]
            if bad:
                raise ValueError(f"{name} {bad}: every value must be in [0, 1)")
        if not self.allocations:
            raise ValueError("allocations is empty: give uniform, sensitivity or both")
        bad_sizes = [s for s in self.image_sizes if s <= 0]
        if bad_sizes:
            raise ValueError(f"image_sizes {bad_sizes}: every size must be > 0")
        if any(g < 1 for g in self.gammas):
            raise ValueError(f"gammas {self.gammas}: the class-dependent weight is >= 1")
        return self

    @property
    def latency_budget_ms(self) -> float | None:
        """The latency budget in ms (a throughput budget at batch 1 is its reciprocal)."""
        if self.latency_ms is not None:
            return self.latency_ms
        return 1000.0 / self.throughput if self.throughput is not None else None

    def resolved(self, dense_p90_ms: float) -> "SearchSection":
        """This section with a ``latency_fraction`` budget turned into ``latency_ms`` against the dense
        architecture's p90 (a section that validates as it is)."""
        if self.latency_fraction is None:
            return self
        return self.model_copy(update={"latency_ms": self.latency_fraction * dense_p90_ms, "latency_fraction": None})

    def constraints(self, lat: dict[str, Any], acc: dict[str, Any] | None,
                    dense: dict[str, Any] | None) -> dict[str, float]:
        """A candidate's constraint values by name, as Optuna takes them (<= 0: feasible): ``lat`` its measured
        ``p90_ms`` / ``size_mb``; ``acc`` its val scores (None before training: latency and size only); ``dense``
        the dense reference's val scores (the top-1 drop and the relative critical budgets)."""
        out: dict[str, float] = {}
        budget = self.latency_budget_ms
        if budget is not None:
            out["latency"] = lat["p90_ms"] - budget
        if self.max_size_mb is not None:
            out["size"] = lat["size_mb"] - self.max_size_mb
        if acc is not None:
            if self.max_critical_fn is not None:
                out["critical_fn"] = acc["critical_fn"] - self.max_critical_fn
            if self.max_critical_fnr is not None:
                fnr = acc["critical_fnr_at_fpr"]
                out["critical_fnr"] = (1.0 if fnr is None else fnr) - self.max_critical_fnr
            if dense is not None:
                out["top1_drop"] = (dense["top1"] - acc["top1"]) - self.max_top1_drop
                # relative critical budgets: against the dense reference, judged on val like the candidate
                if self.max_extra_critical_fn is not None:
                    out["extra_critical_fn"] = (acc["critical_fn"] - dense["critical_fn"]) - self.max_extra_critical_fn
                if self.max_extra_critical_fnr is not None:
                    fnr, ref = acc["critical_fnr_at_fpr"], dense.get("critical_fnr_at_fpr")
                    out["extra_critical_fnr"] = ((1.0 if fnr is None else fnr) - (0.0 if ref is None else ref)
                                                 - self.max_extra_critical_fnr)
        return out
