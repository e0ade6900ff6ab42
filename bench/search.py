"""Budget search against the hand-made arms: dense FP32, INT8 PTQ alone, lite0-fast-int8, and the search's pick.

One run on this host, batch 1, on the target's backend (OpenVINO on an x86 CPU). Arms:

- ``dense FP32`` and ``PTQ INT8``: one pipeline run of the base recipe with ``prune.method: none`` and
  ``quantize.method: ptq`` (its FP32 and INT8 files).
- ``lite0-fast-int8``: the built-in recipe (structured 60 % + QAT with distillation), epochs as given.
- ``search``: ``edgeslim search`` on the same base, once per latency budget: ``--budget-fractions`` of dense p90
  (``0.5,0.333``: half and a third; default 1 / ``--speedup``), with the critical budget ``--critical-budget``:
  ``extra-fn`` (default: at most ``--max-extra-critical-fn`` more missed critical val samples than the search's own
  dense reference, 0 = no more) or ``dense-fnr`` (critical FNR at ``--fpr`` on val at most this bench's dense
  FP32 file's). The searches share one storage and one candidates folder (one Optuna study per budget), so a
  candidate fine-tuned for the first budget is resumed, not trained again, for the next.

Every arm is scored on the test split by its exported file: top-1, per-class recall, critical FN at its deployed
threshold, and critical FNR at the same FPR for all arms (``--fpr``; the matched operating point), plus size.
Latency is the profiler's p90 and median on the deployed files, measured interleaved in one loop at the end.

    python bench/search.py [--data-from lite0-fast-int8|default] [--dataset digits] [--source efficientnet_lite0]
                           [--epochs 1] [--final-epochs 1]
                           [--trials 6] [--time-budget 1800] [--out DIR] [--md bench/results/search.md]
                           [--budget-fractions 0.5,0.333] [--critical-budget extra-fn|dense-fnr]
                           [--max-extra-critical-fn 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path


def _cpu() -> str:
    from edgeslim.hardware import cpu_info

    c = cpu_info()
    isa = c.get("isa") or {}
    int8 = [k for k in ("avx512_vnni", "avx_vnni", "amx_int8") if isa.get(k)]
    return f"{c.get('model')} ({', '.join(int8) if int8 else 'no VNNI/AMX'})"


def _score(artifact: Path, precision: str, data, fpr: float, backend: str, threads: int | None) -> dict:
    from edgeslim.search.site import LocalSite, judge, scores

    z, y, manifest = scores(LocalSite(backend, threads=threads), artifact, precision, "test", data)
    return judge(z, y, manifest, fpr)


def _latency(files: dict[str, tuple[Path, str]], backend: str, threads: int | None, rounds: int, iters: int) -> dict:
    """p90 / median per arm, the arms loaded once and taking turns (``rounds`` turns of ``iters`` calls each,
    :func:`edgeslim.devices.measure.paired_latency`), so the host's drift hits every arm alike."""
    import contextlib

    from edgeslim.devices.measure import paired_latency
    from edgeslim.runtime import load

    with contextlib.ExitStack() as stack:
        backends = [stack.enter_context(load(art, backend=backend, precision=prec, threads=threads)).backend
                    for art, prec in files.values()]
        res = paired_latency(backends, rounds=rounds, calls=iters, warmup=5)
    return {k: {"p90": r["latency_ms"]["p90"], "median": r["latency_ms"]["median"]} for k, r in zip(files, res)}


def _size_mb(artifact: Path, precision: str, fmt: str) -> float:
    from edgeslim.artifact import load_manifest

    m = load_manifest(artifact)
    mf = next(f for f in m.models if f.format == fmt and f.precision == precision)
    p = artifact / mf.path
    return (p.stat().st_size + (p.with_suffix(".bin").stat().st_size if p.suffix == ".xml" else 0)) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-from", default="lite0-fast-int8",
                    help="recipe whose data and loss sections every arm uses (default: the hand recipe's, digits; "
                    "'default' is the main job, ELPV)")
    ap.add_argument("--train-from", default=None,
                    help="take every arm's train and distill sections, and a structured prune section's options, from"
                         " this recipe (e.g. 'default': the main job's frozen, cached stages and their refit), epochs"
                         " as given; default: lite0-fast-int8's SGD schedule")
    ap.add_argument("--dataset", default=None, help="override data.dataset (digits, elpv, imagefolder:DIR, ...)")
    ap.add_argument("--source", default="efficientnet_lite0", help="model.source of the base recipe")
    ap.add_argument("--image-size", type=int, default=None, help="override data.image_size")
    ap.add_argument("--epochs", type=int, default=1, help="dense fine-tuning epochs of every arm")
    ap.add_argument("--final-epochs", type=int, default=1, help="fine-tune after pruning / search fine-tune")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--ratios", default="0.5,0.6,0.7")
    ap.add_argument("--image-sizes", default="", help="comma list the search may pick from (default: --image-size)")
    ap.add_argument("--speedup", type=float, default=3.0, help="latency budget = dense p90 / this")
    ap.add_argument("--budget-fractions", default="",
                    help="comma list: one search per latency budget = dense p90 x each (0.5,0.333: half and a third);"
                    " default 1 / --speedup")
    ap.add_argument("--critical-budget", choices=["extra-fn", "dense-fnr"], default="extra-fn",
                    help="extra-fn: at most --max-extra-critical-fn more missed critical val samples than the search's"
                    " dense reference; dense-fnr: critical FNR at --fpr on val at most the dense FP32 arm's")
    ap.add_argument("--max-extra-critical-fn", type=int, default=0)
    ap.add_argument("--fpr", type=float, default=0.05, help="the matched critical FPR")
    ap.add_argument("--max-top1-drop", type=float, default=0.01)
    ap.add_argument("--time-budget", type=float, default=1800.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", default=None, help="cap the CPU runtime's ISA (oneDNN), e.g. sse41")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--iters", type=int, default=60, help="timed calls per arm per round")
    ap.add_argument("--int8-min-agreement", type=float, default=0.5,
                    help="the export check's INT8 top-1 agreement floor (the bench reports INT8 accuracy itself)")
    ap.add_argument("--skip-lite0-fast", action="store_true", help="leave out the lite0-fast-int8 arm")
    ap.add_argument("--out", type=Path, default=Path("bench-search-out"))
    ap.add_argument("--md", type=Path, default=None, help="write the results table here")
    args = ap.parse_args()
    from edgeslim.search.target import apply_isa, resolve_target

    target = resolve_target("auto", isa=args.isa)
    apply_isa(target.isa)  # before OpenVINO loads
    from edgeslim.compress.quant import with_method
    from edgeslim.pipeline import run_pipeline
    from edgeslim.recipe import load_recipe, parse_recipe
    from edgeslim.search.config import SearchSection
    from edgeslim.search.study import _load_data, search

    t_all = time.perf_counter()
    hand = load_recipe("lite0-fast-int8").to_dict()
    base = dict(hand)
    # every arm compresses for the searched target (its INT8 scheme; with --isa below VNNI that is x86-avx2)
    base.update(name="bench-search", model={"source": args.source}, target=target.name)
    job = load_recipe(args.data_from).to_dict()
    base["data"] = {**job["data"], **({"dataset": args.dataset} if args.dataset else {}),
                    **({"image_size": args.image_size} if args.image_size else {})}
    base["loss"] = job["loss"]
    args.dataset, args.image_size = base["data"]["dataset"], base["data"]["image_size"]
    # the training schedule of every arm: the hand recipe's (SGD, full fine-tune), or with --train-from the main
    # job's (frozen, cached early stages and distillation: the only way 192 px trains in minutes on 2 cores)
    trainer = load_recipe(args.train_from).to_dict() if args.train_from else hand
    base["train"] = {**trainer["train"], "epochs": args.epochs, "final_epochs": args.final_epochs,
                     "threads": args.threads}
    base["distill"] = trainer["distill"] if args.train_from else {"weight": 0.0, "temperature": 4.0}
    if args.train_from and trainer["prune"]["method"] == "structured":
        # the main job's channel-pruning options (its frozen layers' refit, the stem): each candidate sets the ratio
        base["prune"] = trainer["prune"]
    elif args.source != "efficientnet_lite0":  # the hand recipe's exclude names a Lite0 layer
        base["prune"] = {**hand["prune"], "exclude": [], "round_to": 4}
    base["decision"] = {"target_fpr": args.fpr, "target_fnr": None}
    base["profile"] = {**hand["profile"], "backends": ["openvino"], "threads": args.threads}
    base["export"] = {**hand["export"], "formats": ["onnx", "openvino"]}
    # the bench scores every arm's INT8 file itself; the export's parity check must not refuse the PTQ arm
    base["validate"] = {**hand["validate"], "int8_min_agreement": args.int8_min_agreement,
                        "max_extra_critical_fn": 1000}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    say = print

    # dense FP32 + PTQ INT8 alone (one run: no pruning, PTQ of the dense model)
    ptq = with_method(load_recipe("lite0-fast-int8").quantize, "ptq").model_dump(mode="json")
    # prune: none trains final_epochs only: give it the pruned arms' total (dense round + fine-tune), so the
    # baseline is not under-trained against them (the search's own reference, ratio 0, trains both rounds)
    dense_train = {**base["train"], "final_epochs": args.epochs + args.final_epochs}
    dense_r = parse_recipe({**base, "name": "bench-dense", "prune": {"method": "none"}, "quantize": ptq,
                            "train": dense_train, "distill": {**base["distill"], "weight": 0.0}})  # no teacher
    t0 = time.perf_counter()
    d = out / "dense"
    dres = run_pipeline(dense_r, d, resume=(d / "run").is_dir(), progress=False, stages=("compress", "export"))
    dense_art = dres.artifacts["compressed"]
    wall = {"dense + PTQ": time.perf_counter() - t0}
    _, data = _load_data(dense_r)
    arms = {"dense FP32": (dense_art, "fp32"), "PTQ INT8": (dense_art, "int8")}
    if not args.skip_lite0_fast:
        prune = dict(hand["prune"])
        if args.source != "efficientnet_lite0":  # its exclude names a Lite0 layer; keep the rest of the hand recipe
            prune.update(exclude=[], round_to=4)
        lf = parse_recipe({**hand, "target": target.name, "model": base["model"], "data": base["data"], "prune": prune,
                           "train": {**hand["train"], "epochs": args.epochs, "final_epochs": args.final_epochs,
                                     "threads": args.threads},
                           "quantize": {**hand["quantize"], "qat_epochs": args.qat_epochs},
                           "decision": base["decision"], "profile": base["profile"], "export": base["export"],
                           "validate": base["validate"]})
        t0 = time.perf_counter()
        lres = run_pipeline(lf, out / "lite0-fast-int8", resume=(out / "lite0-fast-int8" / "run").is_dir(),
                            progress=False, stages=("compress", "export"))
        wall["lite0-fast-int8"] = time.perf_counter() - t0
        arms["lite0-fast-int8"] = (lres.artifacts["compressed"], "int8")

    # the budgets from the dense model: latency / speedup; critical FNR at the FPR on val at most dense's
    from edgeslim.search.site import LocalSite, judge, scores

    # p90 over a few hundred calls: fewer swing by a third on a 2-core VM, and the budget is a third of it
    lat0 = _latency({"dense": arms["dense FP32"]}, "openvino", args.threads, args.rounds, args.iters)["dense"]
    zv, yv, mv = scores(LocalSite("openvino", threads=args.threads), dense_art, "fp32", "val", data)
    dval = judge(zv, yv, mv, args.fpr)
    fractions = [float(f) for f in args.budget_fractions.split(",") if f] or [1.0 / args.speedup]
    if any(not 0 < f <= 1 for f in fractions):
        raise SystemExit(f"--budget-fractions {args.budget_fractions}: each must be in (0, 1]")
    crit: dict = ({"max_extra_critical_fn": args.max_extra_critical_fn} if args.critical_budget == "extra-fn" else
                  {"max_critical_fnr": dval["critical_fnr_at_fpr"]})
    crit_text = (f"val critical FN <= the search's dense reference's + {args.max_extra_critical_fn}"
                 if args.critical_budget == "extra-fn" else
                 f"val critical FNR at FPR {args.fpr} <= {dval['critical_fnr_at_fpr']}")
    searches = []  # one per budget: (fraction, budget ms, result or None, note, seconds)
    from edgeslim.errors import SearchError

    for frac in fractions:
        # the search times the dense architecture beside every candidate and judges the fraction against it (the
        # host drifts by a quarter over a run: a budget in ms from the dense arm's timing would judge that drift)
        budget: float | None = None
        section = SearchSection(
            latency_fraction=frac, **crit, at_fpr=args.fpr, study=f"bench-search-f{frac:g}",
            max_top1_drop=args.max_top1_drop, trials=args.trials, fine_tune_epochs=args.final_epochs,
            ratios=[float(r) for r in args.ratios.split(",")], precisions=["fp32", "int8"],
            image_sizes=[int(s) for s in args.image_sizes.split(",") if s], time_budget_s=args.time_budget,
            threads=args.threads, isa=args.isa, measure_iterations=200, measure_seconds=1.0)
        say(f"budgets: p90 <= {frac:g} x dense (the dense arm: {lat0['p90']:.3f} ms), {crit_text}, top-1 drop <="
            f" {args.max_top1_drop}")
        t0 = time.perf_counter()
        res = None
        (out / "search" / "front.json").unlink(missing_ok=True)  # the previous budget's
        try:
            res = search(parse_recipe(base), out / "search", section=section, progress=False)
            budget = res.latency_budget_ms
            pick = res.pick
            # the search's outputs are rewritten by the next budget's: keep this one's
            keep = out / f"search-f{frac:g}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out / "search" / "artifact", keep / "artifact")
            shutil.copy2(out / "search" / "front.json", keep / "front.json")
            shutil.copy2(out / "search" / "chosen-recipe.yaml", keep / "chosen-recipe.yaml")
            arms[f"search pick ({frac:g} x dense p90)"] = (keep / "artifact", pick["candidate"]["precision"])
            dense_ref = res.dense
            met = pick["critical_fn"] <= dense_ref["critical_fn"] and dense_ref["top1"] - pick["top1"] <= 0.01
            verdict = (f"val critical FN {pick['critical_fn']} against the search's dense reference's"
                       f" {dense_ref['critical_fn']}, top-1 {pick['top1']:.4f} against {dense_ref['top1']:.4f}"
                       f" (goal {'met' if met else 'not met'}: no more missed critical than dense, top-1 within 1"
                       " point)")
            note = f"pick: {pick['label']}; {verdict}"
        except SearchError as exc:  # the search found nothing, with its reason (any other error is a failure)
            note = f"search found no pick: {exc}"
            if (out / "search" / "front.json").is_file():  # the front that shows it
                (out / f"search-f{frac:g}").mkdir(parents=True, exist_ok=True)
                shutil.copy2(out / "search" / "front.json", out / f"search-f{frac:g}" / "front.json")
                note += f" (front: {out / f'search-f{frac:g}' / 'front.json'})"
        searches.append((frac, budget, res, note, time.perf_counter() - t0))
        wall[f"search {frac:g}"] = time.perf_counter() - t0
        say(note)

    lat = _latency(arms, "openvino", args.threads, args.rounds, args.iters)
    rows = []
    for name, (art, prec) in arms.items():
        s = _score(art, prec, data, args.fpr, "openvino", args.threads)
        rows.append({"arm": name, "precision": prec, **lat[name], "top1": s["top1"], "critical_fn": s["critical_fn"],
                     "fnr_at_fpr": s["critical_fnr_at_fpr"], "recall": s["per_class_recall"],
                     "size_mb": _size_mb(art, prec, "openvino")})
    dense_p90 = rows[0]["p90"]
    ptq_p90 = rows[1]["p90"]
    cmd = "python bench/search.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Command: `{cmd}`  ", f"Host CPU: {_cpu()}; target {target.name}; Python {platform.python_version()};"
        f" threads {args.threads}"
        + (f"; ISA capped at {args.isa}" if args.isa else "") + "  ",
        f"Data: {args.dataset}, {args.source} at {args.image_size}px, dense epochs {args.epochs}, fine-tune"
        f" {args.final_epochs}; test split scored by each exported file (OpenVINO); FNR at matched critical FPR"
        f" {args.fpr}.  "] + [
        f"Search at p90 <= {frac:g} x dense p90{'' if budget is None else f' ({budget:.3f} ms)'}, {crit_text}: {note};"
        f" {args.trials} trials; wall {secs:.0f} s.  " for frac, budget, _, note, secs in searches] + [
        f"Total run {time.perf_counter() - t_all:.0f} s.", "",
        "| arm | prec | p90 ms | median ms | x dense (p90) | x PTQ (p90) | top-1 | crit FN | crit FNR @FPR | size MB |"
        " per-class recall |", "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = "/".join("-" if v is None else f"{v:.2f}" for v in r["recall"])
        fnr = "-" if r["fnr_at_fpr"] is None else f"{r['fnr_at_fpr']:.3f}"
        lines.append(f"| {r['arm']} | {r['precision']} | {r['p90']:.3f} | {r['median']:.3f} | "
                     f"{dense_p90 / r['p90']:.2f} | {ptq_p90 / r['p90']:.2f} | {r['top1']:.4f} | {r['critical_fn']} | "
                     f"{fnr} | {r['size_mb']:.2f} | {rec} |")
    for frac, budget, res, _, _ in searches:
        if res is None:
            continue
        ref = res.latency_reference or {}
        lines += ["", f"Search front (val), budget {frac:g} x dense p90 = {budget:.3f} ms (the dense architecture:"
                  f" {ref.get('p90_ms', float('nan')):.3f} ms, every latency timed beside it); dense reference: top-1"
                  f" {res.dense['top1']:.4f}, crit FN {res.dense['critical_fn']}:", ""]
        for p in res.front:
            lines.append(f"- {p['label']}: p90 {p['latency_ms']:.3f} ms (profiler on the trained file:"
                         f" {p.get('measured_p90_ms', float('nan')):.3f}), top-1 {p['top1']:.4f}, crit FN"
                         f" {p['critical_fn']}, FNR@FPR {p['critical_fnr']:.3f}, {'feasible' if p['feasible'] else 'infeasible'}")
        lines += ["", "Ruled out:", ""] + [f"- {x}" for x in res.ruled_out]
        lines += ["", "Latency model error (leave-one-out): " + json.dumps(res.predictor_error)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        from edgeslim._io import atomic_write_text

        atomic_write_text(args.md, text)


if __name__ == "__main__":
    main()
