"""The budget search: Optuna proposes candidates, the target measures them, short fine-tunes judge accuracy.

Per candidate (one Optuna trial):

1. its architecture latency on the target (random weights, deployed export, the profiler), cached by
   architecture in the study so no process or host measures one twice; a candidate the per-layer latency model
   predicts far over budget, or that measures over it, is pruned before any training (its reason is kept);
2. a short fine-tune (NetAdapt-style: ``search.fine_tune_epochs`` after pruning) with the recipe's
   class-dependent loss, through :func:`edgeslim.pipeline.run_pipeline`, so the candidate is an ordinary recipe;
3. its exported file, as deployed on the target's backend, scored on the val split: top-1, critical FN at the
   calibrated threshold, critical FNR at ``search.at_fpr``. Feasibility (Optuna constraints) is the critical
   budget, the top-1 drop against the dense candidate, latency and size.

Optuna's RDB storage (sqlite by default) holds everything, so a killed search resumes (trials that stopped
heart-beating are retried with the same parameters, finished ones are not repeated), and several processes or
hosts can share one storage URL. The Pareto front (latency, critical FNR, top-1) is re-measured end to end with
the profiler, and the pick is confirmed on the test split by its exported file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._io import atomic_directory, atomic_write_json, atomic_write_text
from ..errors import ConfigError, ExportError, SearchError, TrainingError
from ..recipe import Recipe
from .config import SearchSection
from .sensitivity import allocate
from .space import SENS, SearchSpace, arch_key, build_space, candidate_key, candidate_recipe, prune_config
from .site import LocalSite, RemoteSite, Site
from .target import SearchTarget, apply_isa, resolve_target

__all__ = ["SearchResult", "search", "prepare"]

_DIRECTIONS = ["minimize", "minimize", "maximize"]  # latency p90 ms, critical FNR at the FPR, top-1
# a candidate the latency model predicts this far over budget is not even measured
_PREDICT_MARGIN = 1.5


@dataclass
class SearchResult:
    """What a search produced."""

    out_dir: Path
    target: dict[str, Any]
    front: list[dict[str, Any]]
    pick: dict[str, Any] | None
    ruled_out: list[str]
    dense: dict[str, Any]
    seconds: float
    trials: int
    predictor_error: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    sensitivity: dict[str, Any] | None = None  # per stage, measured on the dense reference (per-stage choices)


@dataclass
class _Context:
    base: Recipe
    section: SearchSection
    target: SearchTarget
    space: SearchSpace
    out_dir: Path
    num_classes: int
    say: Callable[[str], None]
    site: Site


def _optuna() -> Any:
    """Optuna, or a MissingDependencyError naming the ``search`` extra."""
    from ..errors import require

    return require("optuna", extra="search", purpose="edgeslim search (its trials, samplers and storage)")


def _digest(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:12]


def prepare(base: Recipe, section: SearchSection | None = None, *, progress: bool = False, token: str | None = None):
    """Check the inputs before anything runs: the target, the space and the budgets' form. ``token``: a remote
    target's bearer token (default ``EDGESLIM_TOKEN``).

    Returns ``(section, target, space)``.

    Raises:
        ConfigError: no ``search`` section and none given, an empty space, a target that is not this host.
        UnknownNameError: an unknown target name (did-you-mean).
        BackendError: a remote target that does not answer.
    """
    section = section or getattr(base, "search", None)
    if section is None:
        raise ConfigError("the recipe has no 'search:' section; add one (at least search.latency_ms) or pass one")
    base.check_names()
    target = resolve_target(section.target, isa=section.isa, backend=section.backend,
                            token=token if token is not None else os.environ.get("EDGESLIM_TOKEN"))
    apply_isa(target.isa)  # the asked cap, or the one the target implies (x86-avx2 on a VNNI host); before OpenVINO
    space = build_space(base, section, target)
    return section, target, space


# -- latency ------------------------------------------------------------------------------------------------------
def _arch_attr(key: str) -> str:
    return "arch:" + _digest(key)


def _cached_arch(study: Any, key: str) -> dict[str, Any] | None:
    return study.user_attrs.get(_arch_attr(key))


def _measure(ctx: _Context, study: Any, c: dict[str, Any]) -> dict[str, Any]:
    from .latency import measure_architecture

    key = arch_key(c)
    hit = _cached_arch(study, key)
    if hit is not None:
        return hit
    s = ctx.section
    m = measure_architecture(ctx.base, c, backend=ctx.target.backend, num_classes=ctx.num_classes,
                             iterations=s.measure_iterations, seconds=s.measure_seconds, threads=s.threads,
                             float_scope=ctx.space.float_scope.get(c.get("float_layers", "none"), []),
                             device=ctx.target.device, target=ctx.target.name, site=ctx.site)
    d = {**m.to_dict(), "candidate": {k: v for k, v in c.items() if k != "gamma"}}
    study.set_user_attr(_arch_attr(key), d)
    ctx.say(f"measured {_short(c)}: p90 {m.p90_ms:.3f} ms, {m.size_mb:.2f} MB ({m.seconds:.1f} s)")
    return d


def _latency_model(study: Any):
    from .latency import ArchMeasurement, LatencyModel

    lm = LatencyModel()
    for k, v in study.user_attrs.items():
        if k.startswith("arch:"):
            m = ArchMeasurement.from_dict({f: v[f] for f in ArchMeasurement.__dataclass_fields__})
            if m.layers:
                lm.add(v["candidate"]["precision"], m)
    return lm


def _short(c: dict[str, Any]) -> str:
    parts = [c["prune"].replace("structured:", "ch ").replace(":" + SENS, " per-stage"), c["precision"]]
    if c.get("float_layers", "none") != "none":
        parts.append(f"float {c['float_layers']}")
    parts += [f"{c['image_size']}px", f"gamma {c['gamma']:g}"]
    return " ".join(parts)


# -- accuracy -----------------------------------------------------------------------------------------------------
def _scores(site: Site, artifact: Path, precision: str, split: str, data: Any):
    """Outputs of the deployed file on a split, where the target runs it, with the manifest as the file deploys
    (its own calibrated thresholds)."""
    from ..compress.data import split_arrays

    x, y = split_arrays(data, split)
    z, manifest = site.logits(artifact, precision, x)
    return z, y, manifest


def make_site(target: SearchTarget, threads: int | None) -> Site:
    """Where ``target``'s files are timed and scored: the remote server it names, else this process."""
    if target.url:
        return RemoteSite(target.url, token=target.token, backend=target.backend)
    return LocalSite(target.backend, device=target.device, threads=threads)


def _judge(z: np.ndarray, y: np.ndarray, manifest: Any, at_fpr: float) -> dict[str, Any]:
    from ..compress.metrics import evaluate
    from ..compress.thresholds import fnr_at_fpr
    from ..runtime.predictor import softmax

    m = evaluate(z, y, manifest.classes, manifest.critical, thresholds=manifest.thresholds or None,
                 rule=manifest.decision_rule)
    probs = softmax(z)
    fnrs = [fnr_at_fpr(probs, y, c, at_fpr) for c in manifest.critical]
    fnrs = [f for f in fnrs if f is not None]
    return {
        "top1": float(m.accuracy), "critical_fn": m.critical_fn(),
        "critical_fnr_at_fpr": float(np.mean(fnrs)) if fnrs else None,
        "per_class_recall": [pc["recall"] for pc in m.per_class],
        "critical_stats": {str(k): v for k, v in m.critical_stats.items()}, "n": int(m.n),
    }


def _load_data(base: Recipe):
    from ..compress.data import load_data_from_recipe
    from ..compress.sources import load_pretrained

    src = load_pretrained(base.model.source, arch=base.model.arch, pretrained=False)
    return src, load_data_from_recipe(base.data, src.preprocessing, seed=base.seed)


class _Busy(Exception):
    """Another live process is fine-tuning the same candidate."""


@contextlib.contextmanager
def _claim(trial_dir: Path):
    """Hold ``trial_dir`` for this process: an operating-system lock on ``<trial>.lock`` (``filelock``).

    Two workers sharing a storage may be proposed the same candidate; the second one steps aside (the first's
    result is reused through the storage). The system releases the lock of a killed process, so its checkpoints
    resume; a lock held on another host is respected where the storage locks across hosts (NFS does).
    """
    from filelock import FileLock, Timeout

    trial_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(trial_dir.parent / f"{trial_dir.name}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _Busy(f"{trial_dir.name} is being fine-tuned by another process (it holds {lock.lock_file})") from None
    try:
        yield
    finally:
        lock.release()


def _train_and_score(ctx: _Context, c: dict[str, Any]) -> dict[str, Any]:
    """Short fine-tune of a candidate through the pipeline; its exported file scored on val as deployed."""
    key = candidate_key(c)
    trial_dir = ctx.out_dir / "candidates" / _digest(key)
    with _claim(trial_dir):
        return _train_and_score_claimed(ctx, c, trial_dir)


def _train_and_score_claimed(ctx: _Context, c: dict[str, Any], trial_dir: Path) -> dict[str, Any]:
    from ..pipeline import run_pipeline

    key = candidate_key(c)
    recipe = candidate_recipe(ctx.base, c, ctx.section, ctx.target, ctx.space, name=f"{ctx.base.name}-{_digest(key)}")
    resume = (trial_dir / "run").is_dir()
    t0 = time.perf_counter()
    run_pipeline(recipe, trial_dir, resume=resume, progress=False, stages=("compress", "export"))
    _raise_if_left_out(trial_dir / "compressed", ctx.target.backend, c["precision"])
    _, data = _load_data(recipe)
    z, y, manifest = _scores(ctx.site, trial_dir / "compressed", c["precision"], "val", data)
    out = _judge(z, y, manifest, ctx.section.at_fpr)
    out.update(dir=str(trial_dir), train_s=time.perf_counter() - t0)
    return out


def _raise_if_left_out(artifact: Path, backend: str, precision: str) -> None:
    """A partial export (the default) leaves a file out that failed validation, e.g. an INT8 file that even
    accuracy control could not bring within the critical-FN budget: that rules the candidate out, with the export's
    own reason, instead of stopping the search at load time.

    Raises:
        ExportError: the candidate's file (``precision`` in a format ``backend`` runs) is not in the artifact.
    """
    from ..artifact import load_manifest
    from ..runtime.base import BACKENDS

    manifest = load_manifest(artifact)
    formats = BACKENDS.get(backend).formats
    if any(mf.precision == precision and mf.format in formats for mf in manifest.models):
        return
    reasons = [f"{f.get('file')}: {f.get('reason')}" for f in (manifest.validation or {}).get("failed", [])
               if f.get("precision") == precision and f.get("format") in formats]
    raise ExportError(
        f"the export left the {precision} {backend} file out"
        + (f" ({'; '.join(reasons)})" if reasons else " (no such file in the artifact)")
    )


# -- the objective ------------------------------------------------------------------------------------------------
def _suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    c: dict[str, Any] = {}
    for d in space.dims:
        if d.when is not None and c.get(d.when[0]) != d.when[1]:
            continue
        c[d.name] = trial.suggest_categorical(d.name, d.choices)
    return c


def _constraints(ctx: _Context, lat: dict[str, Any], acc: dict[str, Any] | None, dense: dict[str, Any] | None):
    """Optuna constraint values (<= 0 is feasible) and their names."""
    s = ctx.section
    out: dict[str, float] = {}
    budget = s.latency_budget_ms
    if budget is not None:
        out["latency"] = lat["p90_ms"] - budget
    if s.max_size_mb is not None:
        out["size"] = lat["size_mb"] - s.max_size_mb
    if acc is not None:
        if s.max_critical_fn is not None:
            out["critical_fn"] = acc["critical_fn"] - s.max_critical_fn
        if s.max_critical_fnr is not None:
            fnr = acc["critical_fnr_at_fpr"]
            out["critical_fnr"] = (1.0 if fnr is None else fnr) - s.max_critical_fnr
        if dense is not None:
            out["top1_drop"] = (dense["top1"] - acc["top1"]) - s.max_top1_drop
            # relative critical budgets: against the dense reference, judged on val like the candidate
            if s.max_extra_critical_fn is not None:
                out["extra_critical_fn"] = (acc["critical_fn"] - dense["critical_fn"]) - s.max_extra_critical_fn
            if s.max_extra_critical_fnr is not None:
                fnr, ref = acc["critical_fnr_at_fpr"], dense.get("critical_fnr_at_fpr")
                out["extra_critical_fnr"] = ((1.0 if fnr is None else fnr) - (0.0 if ref is None else ref)
                                             - s.max_extra_critical_fnr)
    return out


def _objective(ctx: _Context, study_ref: list[Any]) -> Callable[[Any], tuple[float, float, float]]:
    optuna = _optuna()

    def objective(trial: Any) -> tuple[float, float, float]:
        study = study_ref[0]
        c = _suggest(trial, ctx.space)
        if c["prune"].endswith(":" + SENS):  # its per-stage ratios, from the dense reference's sensitivity
            c["stage_ratios"] = allocate(_stage_sensitivity(ctx, study), float(c["prune"].split(":")[1]))
        key = candidate_key(c)
        trial.set_user_attr("candidate", c)
        trial.set_user_attr("key", key)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get("key") == key and t.number != trial.number:  # the sampler proposed it again
                for k, v in t.user_attrs.items():
                    if k not in ("candidate", "key"):
                        trial.set_user_attr(k, v)
                trial.set_user_attr("duplicate_of", t.number)
                for k, v in zip(t.user_attrs.get("constraint_names", []), t.user_attrs.get("constraints", [])):
                    trial.set_constraint(k, v)
                return tuple(t.values)  # type: ignore[return-value]
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
            if t.user_attrs.get("key") == key:
                trial.set_user_attr("ruled_out", t.user_attrs.get("ruled_out", "as before"))
                raise optuna.TrialPruned(t.user_attrs.get("ruled_out", ""))
        budget = ctx.section.latency_budget_ms
        if budget is not None and _cached_arch(study, arch_key(c)) is None:
            from .latency import build_candidate_model, macs_by_kind

            lm = _latency_model(study)
            if lm.error().get(c["precision"], {}).get("n", 0) >= 3:
                macs = macs_by_kind(*build_candidate_model(ctx.base, c, ctx.num_classes))
                pred = lm.predict(c["precision"], macs)
                if pred is not None and pred > _PREDICT_MARGIN * budget:
                    why = f"{_short(c)}: predicted p90 {pred:.3f} ms > {_PREDICT_MARGIN} x budget {budget:.3f} ms"
                    trial.set_user_attr("ruled_out", why)
                    trial.set_user_attr("predicted_ms", pred)
                    raise optuna.TrialPruned(why)
        lat = _measure(ctx, study, c)
        trial.set_user_attr("latency", {k: lat[k] for k in ("p90_ms", "median_ms", "size_mb", "layer_sum_ms")})
        pre = _constraints(ctx, lat, None, None)
        over = [k for k, v in pre.items() if v > 0]
        if over:  # hopeless: no fine-tune can make it faster or smaller
            why = "; ".join(
                f"{_short(c)}: p90 {lat['p90_ms']:.3f} ms > budget {budget:.3f} ms" if k == "latency"
                else f"{_short(c)}: {lat['size_mb']:.2f} MB > {ctx.section.max_size_mb} MB" for k in over
            )
            trial.set_user_attr("ruled_out", why)
            raise optuna.TrialPruned(why)
        dense = study.user_attrs.get("dense")
        try:
            if dense is not None and candidate_key(dense["candidate"]) == key:  # trained as the reference already
                acc = {k: v for k, v in dense.items() if k not in ("candidate", "latency", "size_mb")}
            else:
                acc = _train_and_score(ctx, c)
        except _Busy as exc:
            raise optuna.TrialPruned(f"{exc}; its result is reused when the sampler proposes it again") from None
        except (ExportError, TrainingError) as exc:  # e.g. INT8 refused by the export's parity check: a result
            why = f"{_short(c)}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            trial.set_user_attr("ruled_out", why)
            raise optuna.TrialPruned(why) from None
        trial.set_user_attr("val", acc)
        cons = _constraints(ctx, lat, acc, dense)
        trial.set_user_attr("constraints", list(cons.values()))
        trial.set_user_attr("constraint_names", list(cons))
        for k, v in cons.items():  # the samplers steer towards feasible candidates with these (<= 0: feasible)
            trial.set_constraint(k, v)
        fnr = acc["critical_fnr_at_fpr"]
        return lat["p90_ms"], 1.0 if fnr is None else fnr, acc["top1"]

    return objective


# -- the study ----------------------------------------------------------------------------------------------------
def _study(ctx: _Context):
    optuna = _optuna()
    RDBStorage, RetryHeartbeatStaleTrialCallback = (  # noqa: N806 - Optuna's class names
        optuna.storages.RDBStorage, optuna.storages.RetryHeartbeatStaleTrialCallback)

    s = ctx.section
    url = s.storage or f"sqlite:///{(ctx.out_dir / 'search.db').resolve()}"
    # heartbeats: a trial whose process was killed stops beating; the next ask (in any process sharing the
    # storage) fails it and re-enqueues its parameters, so the candidate is finished, not repeated
    storage = RDBStorage(url, heartbeat_interval=2, grace_period=6,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
    sampler: Any
    if s.sampler == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=s.seed, population_size=8)
    else:
        sampler = optuna.samplers.TPESampler(seed=s.seed, multivariate=True, n_startup_trials=4)
    name = s.study or f"{ctx.base.name}-{ctx.target.name}" + (f"-{ctx.target.isa}" if ctx.target.isa else "") + (
        f"-{_digest(ctx.target.url)}" if ctx.target.url else "")  # cached latencies belong to that device
    study = optuna.create_study(storage=storage, study_name=name, directions=_DIRECTIONS, sampler=sampler,
                                load_if_exists=True)
    return study, url


def _drop_refused_ratios(ctx: _Context) -> None:
    """Drop the channel ratios that would empty a layer of this model, each with its reason in the ruled-out lines,
    before anything is measured or trained.

    The pruning package prunes such a layer to ``round_to`` channels instead of stopping, so the ratio would not be
    what the candidate says: a lower ratio proposes that model as itself. A layer no wider than ``round_to`` (a
    squeeze-excitation reduction) is kept whole at every ratio, so it rules no ratio out.

    Raises:
        ConfigError: every pruning choice is refused (the space is empty).
    """
    from .latency import build_candidate_model, candidate_channel_plan

    dim = ctx.space.dim("prune")
    size = min(ctx.space.dim("image_size").choices)  # type: ignore[union-attr]
    keep = []
    for choice in dim.choices:  # type: ignore[union-attr]
        kind, _, arg = choice.partition(":")
        # a per-stage choice is capped per stage where a layer would empty (sensitivity.allocate): always valid
        if kind == "structured" and not arg.endswith(":" + SENS) and float(arg) > 0:
            c = {"prune": choice, "precision": "fp32", "image_size": size}
            try:
                plan = candidate_channel_plan(ctx.base, c, ctx.num_classes)
                build_candidate_model(ctx.base, c, ctx.num_classes)
            except ConfigError as exc:
                ctx.space.ruled_out.append(f"ch {arg}: {' '.join(str(exc).split())}")
                continue
            if plan is not None and plan.capped:
                rows = plan.capped
                step = plan.round_to or 1
                best = 1 - step / min(r["channels"] for r in rows)
                ctx.space.ruled_out.append(
                    f"ch {arg}: structured ratio {arg} with round_to {plan.round_to} would remove every channel of "
                    + ", ".join(f"'{r['layer']}' ({r['channels']} channels)" for r in rows[:4])
                    + (f" and {len(rows) - 4} more" if len(rows) > 4 else "")
                    + f" (pruned to {step} channels instead, a lower ratio's model); ratios <= {best:.3f} keep"
                    " their meaning")
                continue
        keep.append(choice)
    if not keep:
        raise ConfigError(f"the search space is empty for target {ctx.target.name}: every pruning choice is refused"
                          " on this model (see the reasons above); give lower search.ratios")
    dim.choices = keep  # type: ignore[union-attr]


def _dense_candidate(space: SearchSpace, base: Recipe) -> dict[str, Any]:
    """The dense reference: channel ratio 0, so it trains on the pruned candidates' schedule (dense round, then the
    short fine-tune); a candidate only when ``search.ratios`` holds 0, the reference of the top-1 drop always."""
    dense = "structured:0"
    sizes = space.dim("image_size").choices  # type: ignore[union-attr]
    size = base.data.image_size if base.data.image_size in sizes else max(sizes)
    gammas = space.dim("gamma").choices  # type: ignore[union-attr]
    g = base.loss.gamma if base.loss.gamma in gammas else gammas[0]
    prec = space.dim("precision").choices  # type: ignore[union-attr]
    return {"prune": dense, "precision": "fp32" if "fp32" in prec else prec[0], "image_size": size, "gamma": g}


def _sens_ratios(ctx: _Context) -> list[float]:
    return [float(p.split(":")[1]) for p in ctx.space.dim("prune").choices  # type: ignore[union-attr]
            if p.endswith(":" + SENS)]


def _stage_sensitivity(ctx: _Context, study: Any) -> dict[str, Any]:
    """Each stage's val loss increase when pruned alone at the largest searched ratio, on the trained dense
    reference (:func:`edgeslim.search.sensitivity.stage_sensitivity`): stored in the study, measured once (by
    whichever process needs it first; the measurement is deterministic, so two processes store the same)."""
    from ..compress.data import split_arrays
    from ..runtime import load
    from .sensitivity import stage_sensitivity

    if "sensitivity" in study.user_attrs:
        return study.user_attrs["sensitivity"]
    dense = study.user_attrs["dense"]
    dense_c, dense_artifact = dense["candidate"], Path(dense["dir"]) / "compressed"
    probe = max(_sens_ratios(ctx))
    t0 = time.perf_counter()
    _, data = _load_data(candidate_recipe(ctx.base, dense_c, ctx.section, ctx.target, ctx.space))
    x, y = split_arrays(data, "val")  # at the dense reference's resolution
    with load(dense_artifact, backend="torch") as pred:
        sens = stage_sensitivity(pred.backend.model, x, y, ratio=probe,
                                 cfg=prune_config(f"structured:{probe:g}", ctx.base), critical=data.critical,
                                 signal=ctx.section.sensitivity)
    ctx.say(f"stage sensitivity ({'critical-class' if sens['signal'] == 'critical' else 'mean'} val loss increase,"
            " each stage alone at ratio "
            f"{probe:g}; {time.perf_counter() - t0:.0f} s): " + ", ".join(
                f"{k} {'-' if v['loss_increase'] is None else format(v['loss_increase'], '+.3f')}"
                for k, v in sens["stages"].items()))
    study.set_user_attr("sensitivity", sens)
    return sens


def _pre_pass(ctx: _Context, study: Any) -> dict[str, dict[str, Any]]:
    """Measure the corners of the space before any training; refuse a latency / size budget nothing meets."""
    s = ctx.section
    out = {}
    for label, c in ctx.space.corners().items():
        out[label] = _measure(ctx, study, c)
    budget = s.latency_budget_ms
    fastest = min((v for k, v in out.items() if k.startswith("fastest")), key=lambda v: v["p90_ms"])
    if budget is not None and fastest["p90_ms"] > budget:
        raise SearchError(
            f"no candidate can meet the latency budget: p90 <= {budget:.3f} ms binds; the fastest candidate in the"
            f" space ({_short({**fastest['candidate'], 'gamma': ctx.base.loss.gamma})}) measures p90"
            f" {fastest['p90_ms']:.3f} ms on {ctx.target.describe()}. Nearest point: that candidate; raise"
            f" search.latency_ms to >= {fastest['p90_ms'] * 1.05:.3f}, or allow higher search.ratios / smaller"
            " search.image_sizes"
        )
    smallest = min(out.values(), key=lambda v: v["size_mb"])
    if s.max_size_mb is not None and smallest["size_mb"] > s.max_size_mb:
        raise SearchError(
            f"no candidate can meet the size budget: <= {s.max_size_mb} MB binds; the smallest candidate"
            f" ({_short({**smallest['candidate'], 'gamma': ctx.base.loss.gamma})}) is {smallest['size_mb']:.2f} MB;"
            " raise search.max_size_mb or allow higher search.ratios / int8"
        )
    return out


def _pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated points (lower latency, lower critical FNR, higher top-1)."""
    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ka = (a["latency_ms"], a["critical_fnr"], -a["top1"])
        kb = (b["latency_ms"], b["critical_fnr"], -b["top1"])
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb

    return sorted([p for p in points if not any(dominates(q, p) for q in points)], key=lambda p: p["latency_ms"])


def _point(t: Any) -> dict[str, Any]:
    c = t.user_attrs["candidate"]
    cons = dict(zip(t.user_attrs.get("constraint_names", []), t.user_attrs.get("constraints", [])))
    return {
        "trial": t.number, "candidate": c, "label": _short(c), "latency_ms": float(t.values[0]),
        "critical_fnr": float(t.values[1]), "top1": float(t.values[2]),
        "critical_fn": t.user_attrs["val"]["critical_fn"], "size_mb": t.user_attrs["latency"]["size_mb"],
        "feasible": all(v <= 0 for v in cons.values()), "violations": {k: v for k, v in cons.items() if v > 0},
        "dir": t.user_attrs["val"]["dir"],
    }


def _ruled_out_lines(ctx: _Context, study: Any, complete: list[dict[str, Any]], dense: dict[str, Any]) -> list[str]:
    optuna = _optuna()

    lines = list(ctx.space.ruled_out)
    seen = set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        why = t.user_attrs.get("ruled_out")
        if why and why not in seen:
            seen.add(why)
            lines.append(why)
    for p in complete:
        if p["feasible"]:
            continue
        bits = []
        for k, v in p["violations"].items():
            if k == "critical_fn":
                bits.append(f"+{p['critical_fn'] - dense.get('critical_fn', 0)} critical FN against dense"
                            f" ({p['critical_fn']} > budget {ctx.section.max_critical_fn})")
            elif k == "critical_fnr":
                bits.append(f"critical FNR {p['critical_fnr']:.3f} at FPR {ctx.section.at_fpr} > budget"
                            f" {ctx.section.max_critical_fnr}")
            elif k == "extra_critical_fn":
                bits.append(f"{p['critical_fn']} critical FN, {p['critical_fn'] - dense['critical_fn']:+d} against"
                            f" dense's {dense['critical_fn']} (> max extra {ctx.section.max_extra_critical_fn})")
            elif k == "extra_critical_fnr":
                ref = dense.get("critical_fnr_at_fpr") or 0.0
                bits.append(f"critical FNR {p['critical_fnr']:.3f} at FPR {ctx.section.at_fpr}, "
                            f"{p['critical_fnr'] - ref:+.3f} against dense's {ref:.3f} (> max extra"
                            f" {ctx.section.max_extra_critical_fnr})")
            elif k == "top1_drop":
                bits.append(f"top-1 {p['top1']:.4f}, {dense['top1'] - p['top1']:+.4f} below dense (> max drop"
                            f" {ctx.section.max_top1_drop})")
            else:
                bits.append(f"{k} over budget by {v:.3f}")
        lines.append(f"{p['label']}: " + "; ".join(bits))
    # precision regions the measurements rule out: INT8 slower than FP32 for the same architecture
    arch = {k: v for k, v in study.user_attrs.items() if k.startswith("arch:")}
    by = {}
    for v in arch.values():
        c = v["candidate"]
        by.setdefault((c["prune"], c["image_size"]), {})[(c["precision"], c.get("float_layers"))] = v["p90_ms"]
    for (prune, size), d in by.items():
        # every INT8 variant of it (stem in float or not) at least as slow as FP32: the fastest one decides
        fp32 = d.get(("fp32", None))
        int8 = min((ms for (p, _), ms in d.items() if p == "int8"), default=None)
        if fp32 is not None and int8 is not None and int8 >= fp32:
            lines.append(f"INT8 slower than FP32 on this target for {prune.replace('structured:', 'ch ')} {size}px:"
                         f" p90 {int8:.3f} ms vs {fp32:.3f} ms")
    return lines


def _binding(ctx: _Context, complete: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for p in complete:
        for k in p["violations"]:
            counts[k] = counts.get(k, 0) + 1
    if not complete:
        return "every candidate was ruled out before training (see the lines above)"
    # the nearest point: the smallest total violation, each normalised by its budget
    s = ctx.section
    scale = {"latency": s.latency_budget_ms or 1, "size": s.max_size_mb or 1,
             "critical_fn": max(1, s.max_critical_fn or 1), "critical_fnr": max(0.01, s.max_critical_fnr or 0.01),
             "extra_critical_fn": max(1, s.max_extra_critical_fn or 1),
             "extra_critical_fnr": max(0.01, s.max_extra_critical_fnr or 0.01),
             "top1_drop": max(0.001, s.max_top1_drop)}
    near = min(complete, key=lambda p: sum(v / scale.get(k, 1) for k, v in p["violations"].items()))
    binds = max(counts, key=counts.get) if counts else "none"
    return (f"the binding constraint is {binds} ({counts.get(binds, 0)} of {len(complete)} fine-tuned candidates"
            f" fail it); nearest point: {near['label']} (p90 {near['latency_ms']:.3f} ms, top-1 {near['top1']:.4f},"
            f" critical FN {near['critical_fn']}, FNR@FPR {near['critical_fnr']:.3f}; over by "
            + ", ".join(f"{k} {v:.3g}" for k, v in near["violations"].items()) + ")")


def search(
    base: Recipe,
    out_dir: str | Path,
    *,
    section: SearchSection | None = None,
    progress: bool = True,
    console: Any = None,
    workers_only: bool = False,
    token: str | None = None,
) -> SearchResult:
    """Find the compression of ``base`` that meets the budgets of ``section`` (default: ``base.search``) on its
    target, and write the front, the chosen recipe, its artifact and the report into ``out_dir``.

    Re-running with the same ``out_dir`` (or storage URL) resumes: finished candidates are not repeated, and
    architectures already measured are not measured again. ``workers_only`` runs trials without writing the
    final outputs (extra processes sharing one storage URL). ``token``: a remote target's bearer token (default:
    ``EDGESLIM_TOKEN``); a remote target (``search.target: http://device:8000``) times and scores every file on that
    device, through a server started with ``--model-control explicit``.

    Raises:
        ConfigError / UnknownNameError / BackendError: bad inputs, before any training (see :func:`prepare`).
        SearchError: a budget no candidate can meet (the binding constraint and the nearest point are named).
    """
    optuna = _optuna()

    t0 = time.perf_counter()
    section, target, space = prepare(base, section, token=token)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda m: console.print(m, highlight=False)) if console is not None else (lambda m: None)
    src, data = _load_data(base)
    ctx = _Context(base=base, section=section, target=target, space=space, out_dir=out,
                   num_classes=len(data.classes), say=say, site=make_site(target, section.threads))
    _drop_refused_ratios(ctx)
    say(f"target: {target.describe()}; space: {space.size()} candidates")
    for line in space.ruled_out:
        say(f"  ruled out: {line}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, url = _study(ctx)
    study.set_user_attr("target", target.to_dict())
    corners = _pre_pass(ctx, study)

    study_ref = [study]
    while workers_only and "dense" not in study.user_attrs and time.perf_counter() - t0 < section.time_budget_s:
        time.sleep(5)  # an extra worker waits for the main process's dense reference
        study, url = _study(ctx)  # re-read: user attrs are cached per study object
        study_ref = [study]
    if "dense" not in study.user_attrs:
        dense_c = _dense_candidate(space, base)
        say(f"dense reference: {_short(dense_c)}")
        lat = _measure(ctx, study, dense_c)
        acc = _train_and_score(ctx, dense_c)
        study.set_user_attr("dense", {**acc, "candidate": dense_c, "latency": lat["p90_ms"],
                                      "size_mb": lat["size_mb"]})
    if _sens_ratios(ctx) and not workers_only:
        _stage_sensitivity(ctx, study)  # once, before the trials (a resumed study has it already)
    dense = study.user_attrs["dense"]
    objective = _objective(ctx, study_ref)

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=states))
    left = max(0, section.trials - done)
    remaining_s = max(1.0, section.time_budget_s - (time.perf_counter() - t0))
    callbacks = [optuna.study.MaxTrialsCallback(section.trials, states=states)]
    bar = _Bar(progress, section.trials, done, section.time_budget_s, t0)
    callbacks.append(bar.update)
    if left:
        with bar:
            study.optimize(objective, n_trials=left, timeout=remaining_s, callbacks=callbacks,
                           catch=(optuna.TrialPruned,))
    if workers_only:
        return SearchResult(out, target.to_dict(), [], None, [], dense, time.perf_counter() - t0, 0)
    return _finish(ctx, study, url, dense, corners, t0)


class _Bar:
    """A rich progress bar: trials done of the budget, the current best feasible latency, the time left."""

    def __init__(self, enabled: bool, total: int, done: int, budget_s: float, t0: float) -> None:
        self.enabled, self.total, self.done, self.budget_s, self.t0 = enabled, total, done, budget_s, t0
        self.progress: Any = None

    def __enter__(self) -> "_Bar":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.description}"), transient=False)
            self.progress.start()
            self.task = self.progress.add_task(self._text(None), total=self.total, completed=self.done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _text(self, study: Any) -> str:
        left = max(0.0, self.budget_s - (time.perf_counter() - self.t0))
        best = "no feasible candidate yet"
        if study is not None:
            feas = [t for t in study.best_trials if all(v <= 0 for v in t.user_attrs.get("constraints", [0]))]
            if feas:
                b = min(feas, key=lambda t: t.values[0])
                best = (f"best {b.values[0]:.3f} ms, top-1 {b.values[2]:.4f}, crit FN "
                        f"{b.user_attrs['val']['critical_fn']}")
        return f"{best} | {left:.0f} s of budget left"

    def update(self, study: Any, trial: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=self._text(study))


def _finish(ctx: _Context, study: Any, url: str, dense: dict[str, Any], corners: dict[str, Any], t0: float):
    optuna = _optuna()

    from ..devices.profiler import ProfileConfig

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    complete = [_point(t) for t in trials if "val" in t.user_attrs and "duplicate_of" not in t.user_attrs]
    ruled = _ruled_out_lines(ctx, study, complete, dense)
    feasible = [p for p in complete if p["feasible"]]
    front = _pareto(complete)
    # every point on the front measured end to end with the profiler, on its trained, exported file
    s = ctx.section
    cfg = ProfileConfig(warmup=5, iterations=max(s.measure_iterations, 50), seconds=s.measure_seconds,
                        throughput=False)
    lm = _latency_model(study)
    for p in front:
        e = ctx.site.latency(Path(p["dir"]) / "compressed", p["candidate"]["precision"], cfg)
        p["measured_p90_ms"] = float(e["latency_ms"]["p90"])
        p["measured_median_ms"] = float(e["latency_ms"]["median"])
    pick = None
    if feasible:
        pick = min(feasible, key=lambda p: (p["latency_ms"], p["critical_fnr"], -p["top1"]))
    files: dict[str, str] = {}
    out = ctx.out_dir
    if pick is not None:
        recipe = candidate_recipe(ctx.base, pick["candidate"], s, ctx.target, ctx.space, name=f"{ctx.base.name}-searched")
        files["recipe"] = str(atomic_write_text(out / "chosen-recipe.yaml", recipe.to_yaml()))
        src_art = Path(pick["dir"]) / "compressed"
        with atomic_directory(out / "artifact") as tmp:
            shutil.copytree(src_art, tmp, dirs_exist_ok=True)
        files["artifact"] = str(out / "artifact")
        # the pick confirmed on the test split by its exported file, as deployed
        _, data = _load_data(recipe)
        z, y, manifest = _scores(ctx.site, out / "artifact", pick["candidate"]["precision"], "test", data)
        pick["test"] = _judge(z, y, manifest, s.at_fpr)
        zd, yd, md = _scores(ctx.site, Path(dense["dir"]) / "compressed", "fp32", "test", data)
        dense["test"] = _judge(zd, yd, md, s.at_fpr)
    result = SearchResult(
        out_dir=out, target=ctx.target.to_dict(), front=front, pick=pick, ruled_out=ruled, dense=dense,
        seconds=time.perf_counter() - t0, trials=len(study.trials), predictor_error=lm.error(), files=files,
        sensitivity=study.user_attrs.get("sensitivity"),
    )
    files.update(_write_outputs(ctx, result, url, corners, complete))
    if pick is None:
        raise SearchError(
            f"no candidate met every budget in {len(complete)} fine-tuned candidates ({len(study.trials)} trials): "
            + _binding(ctx, complete) + f". Front and reasons in {out / 'front.json'} and {out / 'ruled-out.txt'}"
        )
    return result


def _write_outputs(ctx: _Context, r: SearchResult, url: str, corners: dict[str, Any],
                   complete: list[dict[str, Any]]) -> dict[str, str]:
    from ..devices.html import render_html
    from ..devices.report import make_report

    s = ctx.section
    doc = {
        "schema": "edgeslim.search/1", "target": r.target, "storage": url, "budgets": s.model_dump(mode="json"),
        "space": ctx.space.to_dict(), "dense": r.dense, "front": r.front, "pick": r.pick, "candidates": complete,
        "corners": {k: {f: v[f] for f in ("p90_ms", "median_ms", "size_mb", "candidate")} for k, v in corners.items()},
        "predictor_error": r.predictor_error, "ruled_out": r.ruled_out, "seconds": r.seconds, "trials": r.trials,
        "sensitivity": r.sensitivity,
    }
    files = {"front": str(atomic_write_json(ctx.out_dir / "front.json", doc)),
             "ruled_out": str(atomic_write_text(ctx.out_dir / "ruled-out.txt", "\n".join(r.ruled_out) + "\n"))}
    report = make_report([], title=f"edgeslim search: {ctx.base.name} on {ctx.target.name}", extra={"search": doc})
    md = _markdown(doc)
    files["json"] = str(atomic_write_json(ctx.out_dir / "report.json", report))
    files["md"] = str(atomic_write_text(ctx.out_dir / "report.md", md))
    # render_html draws the Pareto front from report["search"] (latency vs critical FNR, coloured by top-1)
    files["html"] = str(atomic_write_text(ctx.out_dir / "report.html", render_html(report, markdown=md)))
    return files


def _markdown(doc: dict[str, Any]) -> str:
    t = doc["target"]
    lines = [f"# edgeslim search on {t['name']} ({t['backend']}, CPU {t.get('cpu')}, ISA {', '.join(t.get('cpu_isa') or []) or '-'}"
             + (f", capped at {t['isa_cap']}" if t.get("isa_cap") else "") + ")", ""]
    d = doc["dense"]
    lines += [f"Dense reference (val): top-1 {d['top1']:.4f}, critical FN {d['critical_fn']}, p90 {d['latency']:.3f} ms",
              "", "## Pareto front (val; latency p90 on the target)", "",
              "| candidate | p90 ms (search) | p90 ms (profiler, trained file) | top-1 | crit FN | crit FNR@FPR | size MB | feasible |",
              "|---|---|---|---|---|---|---|---|"]
    for p in doc["front"]:
        lines.append(f"| {p['label']} | {p['latency_ms']:.3f} | {p.get('measured_p90_ms', float('nan')):.3f} | "
                     f"{p['top1']:.4f} | {p['critical_fn']} | {p['critical_fnr']:.3f} | {p['size_mb']:.2f} | "
                     f"{'yes' if p['feasible'] else 'no: ' + ', '.join(p['violations'])} |")
    if doc["pick"]:
        p = doc["pick"]
        te = p.get("test") or {}
        lines += ["", f"**Pick:** {p['label']}: p90 {p['latency_ms']:.3f} ms; test (exported file): top-1 "
                  f"{te.get('top1', float('nan')):.4f}, critical FN {te.get('critical_fn')}, per-class recall "
                  + ", ".join("-" if r is None else f"{r:.3f}" for r in te.get("per_class_recall", []))]
        if p["candidate"].get("stage_ratios"):
            lines += ["", "Its per-stage channel ratios: " + ", ".join(
                f"{k} {v:g}" for k, v in p["candidate"]["stage_ratios"].items())]
    sens = doc.get("sensitivity")
    if sens:
        used = sens.get("signal", "mean")
        lines += ["", f"## Stage sensitivity (dense reference, each stage alone at ratio {sens['probe_ratio']:g},"
                  f" no fine-tune; the allocation follows the {used} loss)", "",
                  "| stage | critical-class val loss increase | mean val loss increase | prunable conv params |"
                  " largest safe ratio |", "|---|---|---|---|---|"]

        def _inc(v: Any) -> str:
            return "-" if v is None else f"{v:+.4f}"

        for k, v in sens["stages"].items():
            mean = v.get("mean_loss_increase", v["loss_increase"] if used == "mean" else None)
            lines.append(f"| {k} | {_inc(v.get('critical_loss_increase'))} | {_inc(mean)} | {v['params']} |"
                         f" {v['max_ratio']:g} |")
    lines += ["", "## Latency model (leave-one-out error against measurement)", ""]
    for prec, e in doc["predictor_error"].items():
        mape = "n/a (fewer than 3 points)" if e["mape"] is None else f"{100 * e['mape']:.1f} % mean, {100 * e['max']:.1f} % max"
        lines.append(f"- {prec}: {e['n']} architectures, {mape}")
    lines += ["", "## Ruled out", ""] + [f"- {x}" for x in doc["ruled_out"]]
    methods = (doc.get("space") or {}).get("methods") or {}
    if methods:
        lines += ["", "## Registered pruning methods on this target", ""]
        lines += [f"- {name}: {note}" for name, note in methods.items()]
    lines += ["", f"Search wall time {doc['seconds']:.1f} s, {doc['trials']} trials; storage {doc['storage']}", ""]
    return "\n".join(lines)

