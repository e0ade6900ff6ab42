"""The budget search: Optuna proposes candidates, the target measures them, short fine-tunes judge accuracy.

Per candidate (one Optuna trial, a :class:`~edgeslim.search.candidate.Candidate`):

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
the profiler, and the pick is confirmed on the test split by its exported file; :mod:`edgeslim.search.report`
writes what the search found.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .._io import atomic_directory, atomic_write_text
from ..errors import ArtifactError, ConfigError, ExportError, IntegrityError, SearchError, TrainingError
from ..recipe import Recipe
from .candidate import Candidate, PruneChoice, prune_config
from .config import SearchSection
from .report import (Progress, SearchResult, binding, pareto, pick_measured, point, ruled_out_lines,
                     write_outputs)
from .sensitivity import allocate
from .site import Site, judge, make_site, require_file, scores
from .space import SearchSpace, build_space
from .target import SearchTarget, apply_isa, resolve_target

__all__ = ["SearchResult", "search", "prepare"]

_DIRECTIONS = ["minimize", "minimize", "maximize"]  # latency p90 ms, critical FNR at the FPR, top-1
# a candidate the latency model predicts this far over budget is not even measured
_PREDICT_MARGIN = 1.5


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
    reference: tuple[Path, str] | None = None  # the latency reference's file, once written and checked (_reference)

    def recipe(self, c: Candidate, name: str | None = None) -> Recipe:
        return c.to_recipe(self.base, self.section, self.target, self.space, name=name)


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
def _arch_scope(base: Any) -> str | None:
    """What of the base shapes every candidate's architecture besides the candidate: the layers ``train.freeze``
    keeps whole, or, with ``prune.frozen_ratio``, the widths their refit leaves. A measurement belongs to it."""
    freeze = base.train.freeze
    refit = getattr(base.prune, "frozen_ratio", 0.0) if freeze else 0.0
    if not refit:
        return freeze
    first = " with the stem" if getattr(base.prune, "prune_first_conv", False) else ""
    return f"{freeze}, refit {refit:g}{first}, stages {sorted(base.prune.stage_ratios.items())}"


def _arch_attr(c: Candidate, frozen: str | None) -> str:
    # the base's frozen layers (whole, or refit) make the same candidate another architecture; "paired": timed side by
    # side with the reference, so a study's older unpaired timings (another host state) are not mixed in
    key = c.arch_key if not frozen else f"{c.arch_key}|frozen up to {frozen}"
    return "arch:" + _digest(f"{key}|paired")


def _cached_arch(study: Any, c: Candidate, frozen: str | None) -> dict[str, Any] | None:
    return study.user_attrs.get(_arch_attr(c, frozen))


def _archs(study: Any, frozen: str | None) -> list[dict[str, Any]]:
    """The study's architecture measurements of the base's freeze boundary (each with its ``candidate``, gamma
    left out)."""
    return [v for k, v in study.user_attrs.items() if k.startswith("arch:") and v.get("frozen_up_to") == frozen]


def _reference(ctx: _Context) -> tuple[Path, str]:
    """The search's latency reference: the dense architecture (random weights, FP32, exported as deployed) in
    ``<out>/reference-arch``, written once (and checked once per search); every local measurement times it side by
    side with its file."""
    from ..artifact import load_manifest
    from .latency import export_architecture

    if ctx.reference is not None:
        return ctx.reference
    path = ctx.out_dir / "reference-arch"
    try:
        load_manifest(path)  # checks every file's sha256
    except (ArtifactError, IntegrityError):  # absent or damaged: written again
        dense = ctx.space.dense(ctx.base).arch().to_dict()
        dense["precision"] = "fp32"
        with atomic_directory(path) as tmp:
            export_architecture(ctx.base, dense, tmp, backend=ctx.target.backend, num_classes=ctx.num_classes,
                                target=ctx.target.name)
    ctx.reference = (path, "fp32")
    return ctx.reference


def _anchor(ctx: _Context, study: Any) -> float | None:
    """The reference's p90 when the study first timed it (stored in the study, so a resumed study and extra workers
    share it), or None where measurements are not paired (a remote site). Every later measurement is scaled by
    ``anchor / reference p90 in its own window``: the host's drift between windows (a quarter on a 2-core VM over a
    search) cancels, and ``search.latency_fraction`` budgets are a fraction of this figure."""
    if ctx.site.remote:
        return None
    got = study.user_attrs.get("latency_anchor")
    if got is not None:
        return float(got["p90_ms"])
    from ..devices.profiler import ProfileConfig

    s = ctx.section
    ref = _reference(ctx)
    # timed as every later window is (two loaded files taking turns): here the reference beside a second copy of
    # itself, so the anchor carries the same switching cost as the windows it scales
    e, _ = ctx.site.paired_latency(ref[0], ref[1], ref, ProfileConfig(warmup=5, iterations=s.measure_iterations,
                                                                      seconds=s.measure_seconds, throughput=False))
    study.set_user_attr("latency_anchor", {"p90_ms": float(e["latency_ms"]["p90"]),
                                           "median_ms": float(e["latency_ms"]["median"]), "file": str(ref[0])})
    ctx.say(f"latency reference: the dense architecture, p90 {e['latency_ms']['p90']:.3f} ms")
    return float(e["latency_ms"]["p90"])


def _timed_file(ctx: _Context, study: Any, artifact: Path, precision: str, cfg: Any) -> dict[str, float]:
    """A trained file's p90 / median (ms), timed side by side with the reference and scaled to the anchor as every
    architecture measurement is; ``raw_p90_ms`` as timed."""
    anchor = _anchor(ctx, study)
    if anchor is None:
        e = ctx.site.latency(artifact, precision, cfg)
        return {"p90_ms": float(e["latency_ms"]["p90"]), "median_ms": float(e["latency_ms"]["median"]),
                "raw_p90_ms": float(e["latency_ms"]["p90"])}
    res, ref = ctx.site.paired_latency(artifact, precision, _reference(ctx), cfg)
    k = anchor / float(ref["latency_ms"]["p90"])
    return {"p90_ms": k * float(res["latency_ms"]["p90"]), "median_ms": k * float(res["latency_ms"]["median"]),
            "raw_p90_ms": float(res["latency_ms"]["p90"]), "reference_p90_ms": float(ref["latency_ms"]["p90"])}


def _latency_reference(study: Any) -> dict[str, Any] | None:
    """What every latency of the study is scaled to: the dense architecture's first p90 (None: not paired)."""
    got = study.user_attrs.get("latency_anchor")
    return None if got is None else {**got, "what": "the dense architecture (random weights, FP32), timed beside"
                                     " every file; each p90 scaled by anchor / its p90 in the same window"}


def _measure(ctx: _Context, study: Any, c: Candidate) -> dict[str, Any]:
    from .latency import measure_architecture

    frozen = _arch_scope(ctx.base)
    hit = _cached_arch(study, c, frozen)
    if hit is not None:
        return hit
    s = ctx.section
    anchor = _anchor(ctx, study)
    m = measure_architecture(ctx.base, c.to_dict(), backend=ctx.target.backend, num_classes=ctx.num_classes,
                             iterations=s.measure_iterations, seconds=s.measure_seconds, threads=s.threads,
                             float_scope=ctx.space.float_scope.get(c.float_layers or "none", []),
                             device=ctx.target.device, target=ctx.target.name, site=ctx.site,
                             reference=_reference(ctx) if anchor is not None else None)
    d = {**m.to_dict(), "candidate": c.arch().to_dict(), **({"frozen_up_to": frozen} if frozen else {})}
    drift = ""
    if anchor is not None and m.reference_p90_ms:
        k = anchor / m.reference_p90_ms  # this window's host state, scaled back to the anchor's
        d.update(raw_p90_ms=m.p90_ms, p90_ms=k * m.p90_ms, median_ms=k * m.median_ms)
        drift = f"; reference {m.reference_p90_ms / anchor:.2f}x its first timing"
    study.set_user_attr(_arch_attr(c, frozen), d)
    ctx.say(f"measured {c.label}: p90 {d['p90_ms']:.3f} ms, {m.size_mb:.2f} MB ({m.seconds:.1f} s{drift})")
    return d


def _latency_model(study: Any, frozen: str | None):
    from .latency import ArchMeasurement, LatencyModel

    lm = LatencyModel()
    for v in _archs(study, frozen):
        m = ArchMeasurement.from_dict(v)
        if m.layers:
            lm.add(v["candidate"]["precision"], m)
    return lm


# -- accuracy -----------------------------------------------------------------------------------------------------
def _load_data(base: Recipe):
    from ..compress.data import load_data_from_recipe
    from ..compress.sources import load_pretrained

    src = load_pretrained(base.model.source, arch=base.model.arch, pretrained=False)
    return src, load_data_from_recipe(base.data, src.preprocessing, seed=base.seed)


class _Busy(Exception):
    """Another live process is fine-tuning the same candidate."""


@contextlib.contextmanager
def _claim(trial_dir: Path) -> Iterator[None]:
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


def _train_and_score(ctx: _Context, c: Candidate) -> dict[str, Any]:
    """Short fine-tune of a candidate through the pipeline; its exported file scored on val as deployed."""
    trial_dir = ctx.out_dir / "candidates" / _digest(c.key)
    with _claim(trial_dir):
        return _train_and_score_claimed(ctx, c, trial_dir)


def _train_and_score_claimed(ctx: _Context, c: Candidate, trial_dir: Path) -> dict[str, Any]:
    from ..pipeline import run_pipeline

    recipe = ctx.recipe(c, name=f"{ctx.base.name}-{_digest(c.key)}")
    resume = (trial_dir / "run").is_dir()
    t0 = time.perf_counter()
    run_pipeline(recipe, trial_dir, resume=resume, progress=False, stages=("compress", "export"))
    require_file(trial_dir / "compressed", ctx.target.backend, c.precision)
    _, data = _load_data(recipe)
    z, y, manifest = scores(ctx.site, trial_dir / "compressed", c.precision, "val", data)
    out = judge(z, y, manifest, ctx.section.at_fpr)
    out.update(dir=str(trial_dir), train_s=time.perf_counter() - t0)
    return out


# -- the objective ------------------------------------------------------------------------------------------------
def _constraints(ctx: _Context, lat: dict[str, Any], acc: dict[str, Any] | None, dense: dict[str, Any] | None):
    """Optuna constraint values (<= 0 is feasible) by name (:meth:`SearchSection.constraints`)."""
    return ctx.section.constraints(lat, acc, dense)


def _reuse(trial: Any, study: Any, key: str) -> tuple[float, float, float] | None:
    """The result of a candidate the study already finished (the sampler proposed it again), copied onto
    ``trial``; raises TrialPruned for one it already ruled out; None for a new candidate."""
    optuna = _optuna()

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("key") == key and t.number != trial.number:
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
    return None


def _objective(ctx: _Context, study_ref: list[Any]) -> Callable[[Any], tuple[float, float, float]]:
    optuna = _optuna()

    def objective(trial: Any) -> tuple[float, float, float]:
        study = study_ref[0]
        c = ctx.space.suggest(trial)
        if c.prune.per_stage:  # its per-stage ratios, from the dense reference's sensitivity
            c = c.with_stage_ratios(allocate(_stage_sensitivity(ctx, study), c.prune.ratio or 0.0))
        trial.set_user_attr("candidate", c.to_dict())
        trial.set_user_attr("key", c.key)
        before = _reuse(trial, study, c.key)
        if before is not None:
            return before
        budget = ctx.section.latency_budget_ms
        if budget is not None and _cached_arch(study, c, _arch_scope(ctx.base)) is None:
            from .latency import build_candidate_model, macs_by_kind

            lm = _latency_model(study, _arch_scope(ctx.base))
            if lm.error().get(c.precision, {}).get("n", 0) >= 3:
                macs = macs_by_kind(*build_candidate_model(ctx.base, c.to_dict(), ctx.num_classes))
                pred = lm.predict(c.precision, macs)
                if pred is not None and pred > _PREDICT_MARGIN * budget:
                    why = f"{c.label}: predicted p90 {pred:.3f} ms > {_PREDICT_MARGIN} x budget {budget:.3f} ms"
                    trial.set_user_attr("ruled_out", why)
                    trial.set_user_attr("predicted_ms", pred)
                    raise optuna.TrialPruned(why)
        lat = _measure(ctx, study, c)
        trial.set_user_attr("latency", {k: lat[k] for k in ("p90_ms", "median_ms", "size_mb", "layer_sum_ms")})
        pre = _constraints(ctx, lat, None, None)
        over = [k for k, v in pre.items() if v > 0]
        if over:  # hopeless: no fine-tune can make it faster or smaller
            why = "; ".join(
                f"{c.label}: p90 {lat['p90_ms']:.3f} ms > budget {budget:.3f} ms" if k == "latency"
                else f"{c.label}: {lat['size_mb']:.2f} MB > {ctx.section.max_size_mb} MB" for k in over
            )
            trial.set_user_attr("ruled_out", why)
            raise optuna.TrialPruned(why)
        dense = study.user_attrs.get("dense")
        try:
            if dense is not None and Candidate.from_params(dense["candidate"]).key == c.key:  # trained already
                acc = {k: v for k, v in dense.items() if k not in ("candidate", "latency", "size_mb")}
            else:
                acc = _train_and_score(ctx, c)
        except _Busy as exc:
            raise optuna.TrialPruned(f"{exc}; its result is reused when the sampler proposes it again") from None
        except (ExportError, TrainingError) as exc:  # e.g. INT8 refused by the export's parity check: a result
            why = f"{c.label}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
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
        # a per-stage choice is capped per stage where a layer would empty (sensitivity.allocate): always valid
        if choice.method == "structured" and not choice.per_stage and (choice.ratio or 0) > 0:
            c = Candidate(prune=choice, precision="fp32", image_size=size).to_dict()
            try:
                plan = candidate_channel_plan(ctx.base, c, ctx.num_classes)
                build_candidate_model(ctx.base, c, ctx.num_classes)
            except ConfigError as exc:
                ctx.space.ruled_out.append(f"{choice.short}: {' '.join(str(exc).split())}")
                continue
            if plan is not None and plan.capped:
                rows = plan.capped
                step = plan.round_to or 1
                best = 1 - step / min(r["channels"] for r in rows)
                ctx.space.ruled_out.append(
                    f"{choice.short}: structured ratio {choice.ratio:g} with round_to {plan.round_to} would remove"
                    " every channel of "
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


def _stage_sensitivity(ctx: _Context, study: Any) -> dict[str, Any]:
    """Each stage's val loss increase when pruned alone at the largest searched ratio, on the trained dense
    reference (:func:`edgeslim.search.sensitivity.stage_sensitivity`): stored in the study, measured once (by
    whichever process needs it first; the measurement is deterministic, so two processes store the same)."""
    from ..compress.data import split_arrays
    from .sensitivity import describe, measure_artifact

    if "sensitivity" in study.user_attrs:
        return study.user_attrs["sensitivity"]
    dense = study.user_attrs["dense"]
    probe = max(ctx.space.per_stage_ratios())
    t0 = time.perf_counter()
    _, data = _load_data(ctx.recipe(Candidate.from_params(dense["candidate"])))
    x, y = split_arrays(data, "val")  # at the dense reference's resolution
    sens = measure_artifact(Path(dense["dir"]) / "compressed", x, y, ratio=probe,
                            cfg=prune_config(PruneChoice("structured", ratio=probe), ctx.base), critical=data.critical,
                            signal=ctx.section.sensitivity, freeze=ctx.base.train.freeze)
    ctx.say(describe(sens, time.perf_counter() - t0))
    study.set_user_attr("sensitivity", sens)
    return sens


def _pre_pass(ctx: _Context, study: Any) -> dict[str, dict[str, Any]]:
    """Measure the corners of the space before any training; refuse a latency / size budget nothing meets."""
    s = ctx.section
    out = {}
    for label, c in ctx.space.corners().items():
        out[label] = _measure(ctx, study, c)

    def said(v: dict[str, Any]) -> str:
        return Candidate.from_params({**v["candidate"], "gamma": ctx.base.loss.gamma}).label

    budget = s.latency_budget_ms
    fastest = min((v for k, v in out.items() if k.startswith("fastest")), key=lambda v: v["p90_ms"])
    if budget is not None and fastest["p90_ms"] > budget:
        frac, ref = study.user_attrs.get("latency_fraction"), _latency_reference(study)
        if frac is not None and ref is not None:
            what = f" ({frac:g} x the dense architecture's {ref['p90_ms']:.3f} ms)"
            fastest_is = f" = {fastest['p90_ms'] / ref['p90_ms']:.3f} x dense"
            raise_to = f"search.latency_fraction to >= {fastest['p90_ms'] / ref['p90_ms'] * 1.05:.3f}"
        else:
            what, fastest_is, raise_to = "", "", f"search.latency_ms to >= {fastest['p90_ms'] * 1.05:.3f}"
        raise SearchError(
            f"no candidate can meet the latency budget: p90 <= {budget:.3f} ms{what} binds; the fastest candidate in"
            f" the space ({said(fastest)}) measures p90 {fastest['p90_ms']:.3f} ms{fastest_is} on"
            f" {ctx.target.describe()}. Nearest point: that candidate; raise {raise_to}, or allow higher"
            " search.ratios / smaller search.image_sizes"
        )
    smallest = min(out.values(), key=lambda v: v["size_mb"])
    if s.max_size_mb is not None and smallest["size_mb"] > s.max_size_mb:
        raise SearchError(
            f"no candidate can meet the size budget: <= {s.max_size_mb} MB binds; the smallest candidate"
            f" ({said(smallest)}) is {smallest['size_mb']:.2f} MB; raise search.max_size_mb or allow higher"
            " search.ratios / int8"
        )
    return out


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
        ConfigError / UnknownNameError / BackendError: bad inputs, before any training (see :func:`prepare`); a
            study whose records do not read as candidates (:meth:`Candidate.from_params`).
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
    anchor = _anchor(ctx, study)
    if section.latency_fraction is not None:
        if anchor is None:
            raise ConfigError("search.latency_fraction needs the dense reference timed beside each candidate, which"
                              " a remote target does not do; give search.latency_ms instead")
        ctx.section = section.resolved(anchor)
        study.set_user_attr("latency_fraction", section.latency_fraction)
        say(f"latency budget: p90 <= {ctx.section.latency_ms:.3f} ms ({section.latency_fraction:g} x the dense"
            " architecture's)")
    corners = _pre_pass(ctx, study)

    study_ref = [study]
    while workers_only and "dense" not in study.user_attrs and time.perf_counter() - t0 < section.time_budget_s:
        time.sleep(5)  # an extra worker waits for the main process's dense reference
        study, url = _study(ctx)  # re-read: user attrs are cached per study object
        study_ref = [study]
    if "dense" not in study.user_attrs:
        dense_c = space.dense(base)
        say(f"dense reference: {dense_c.label}")
        lat = _measure(ctx, study, dense_c)
        acc = _train_and_score(ctx, dense_c)
        study.set_user_attr("dense", {**acc, "candidate": dense_c.to_dict(), "latency": lat["p90_ms"],
                                      "size_mb": lat["size_mb"]})
    if ctx.space.per_stage_ratios() and not workers_only:
        _stage_sensitivity(ctx, study)  # once, before the trials (a resumed study has it already)
    dense = study.user_attrs["dense"]
    objective = _objective(ctx, study_ref)

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=states))
    left = max(0, section.trials - done)
    remaining_s = max(1.0, section.time_budget_s - (time.perf_counter() - t0))
    callbacks = [optuna.study.MaxTrialsCallback(section.trials, states=states)]
    bar = Progress(progress, section.trials, done, section.time_budget_s, t0)
    callbacks.append(bar.update)
    if left:
        with bar:
            study.optimize(objective, n_trials=left, timeout=remaining_s, callbacks=callbacks,
                           catch=(optuna.TrialPruned,))
    if workers_only:
        return SearchResult(out, target.to_dict(), [], None, [], dense, time.perf_counter() - t0, 0)
    return _finish(ctx, study, url, dense, corners, t0)


def _finish(ctx: _Context, study: Any, url: str, dense: dict[str, Any], corners: dict[str, Any], t0: float):
    optuna = _optuna()

    from ..devices.profiler import ProfileConfig

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    complete = [point(t) for t in trials if "val" in t.user_attrs and "duplicate_of" not in t.user_attrs]
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    s = ctx.section
    ruled = ruled_out_lines(s, ctx.space.ruled_out, (t.user_attrs.get("ruled_out") for t in pruned),
                            _archs(study, _arch_scope(ctx.base)),
                            complete, dense)
    feasible = [p for p in complete if p["feasible"]]
    front = pareto(complete)
    # every point on the front measured end to end with the profiler, on its trained, exported file
    cfg = ProfileConfig(warmup=5, iterations=max(s.measure_iterations, 50), seconds=s.measure_seconds,
                        throughput=False)
    lm = _latency_model(study, _arch_scope(ctx.base))

    def measure(p: dict[str, Any]) -> None:
        if "measured_p90_ms" not in p:
            e = _timed_file(ctx, study, Path(p["dir"]) / "compressed", p["candidate"]["precision"], cfg)
            p["measured_p90_ms"], p["measured_median_ms"] = e["p90_ms"], e["median_ms"]

    for p in front:
        measure(p)
    pick = pick_measured(feasible, s.latency_budget_ms, measure)
    files: dict[str, str] = {}
    out = ctx.out_dir
    if pick is not None:
        recipe = ctx.recipe(Candidate.from_params(pick["candidate"]), name=f"{ctx.base.name}-searched")
        files["recipe"] = str(atomic_write_text(out / "chosen-recipe.yaml", recipe.to_yaml()))
        src_art = Path(pick["dir"]) / "compressed"
        with atomic_directory(out / "artifact") as tmp:
            shutil.copytree(src_art, tmp, dirs_exist_ok=True)
        files["artifact"] = str(out / "artifact")
        # the pick confirmed on the test split by its exported file, as deployed
        _, data = _load_data(recipe)
        z, y, manifest = scores(ctx.site, out / "artifact", pick["candidate"]["precision"], "test", data)
        pick["test"] = judge(z, y, manifest, s.at_fpr)
        zd, yd, md = scores(ctx.site, Path(dense["dir"]) / "compressed", "fp32", "test", data)
        dense["test"] = judge(zd, yd, md, s.at_fpr)
    result = SearchResult(
        out_dir=out, target=ctx.target.to_dict(), front=front, pick=pick, ruled_out=ruled, dense=dense,
        seconds=time.perf_counter() - t0, trials=len(study.trials), predictor_error=lm.error(), files=files,
        sensitivity=study.user_attrs.get("sensitivity"), latency_budget_ms=s.latency_budget_ms,
        latency_reference=_latency_reference(study),
    )
    doc = {
        "schema": "edgeslim.search/1", "target": result.target, "storage": url,
        "budgets": {**s.model_dump(mode="json"), "latency_fraction": study.user_attrs.get("latency_fraction")},
        "latency_reference": result.latency_reference, "space": ctx.space.to_dict(), "dense": dense, "front": front,
        "pick": pick, "candidates": complete,
        "corners": {k: {f: v[f] for f in ("p90_ms", "median_ms", "size_mb", "candidate")} for k, v in corners.items()},
        "predictor_error": result.predictor_error, "ruled_out": ruled, "seconds": result.seconds,
        "trials": result.trials, "sensitivity": result.sensitivity,
    }
    files.update(write_outputs(out, f"edgeslim search: {ctx.base.name} on {ctx.target.name}", doc))
    if pick is None:
        raise SearchError(
            f"no candidate met every budget in {len(complete)} fine-tuned candidates ({len(study.trials)} trials): "
            + binding(s, complete) + f". Front and reasons in {out / 'front.json'} and {out / 'ruled-out.txt'}"
        )
    return result
