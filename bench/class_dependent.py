"""The class-dependent compression benchmark (issue 3): is the loss better than a re-thresholded baseline?

Arms, trained with the same W0, rounds, sparsity, seeds and batch order (edgeslim's ``lottery_ticket`` pruner,
``MaskSet``, losses, metrics and thresholds; nothing is re-implemented here):

* ``a``        class-agnostic lottery ticket, plain cross-entropy;
* ``b``        class-dependent loss (effective-number weights, gamma 1 in round 1 then 5, lambda 5);
* ``b+budget`` the same with the FPR budget governing gamma, lambda and the critical balance from round 1 on
  (``--fpr-budget``; off with ``--fpr-budget 0``);
* ``c``        arm ``a``'s models with the critical threshold calibrated on the val split to ``b``'s val FPR
  (``edgeslim.compress.thresholds.calibrate_thresholds``); ``c+budget`` likewise matched to ``b+budget``;
* ``b+thr`` / ``c+thr``  ``b`` and ``a`` deployed as ``edgeslim pipeline`` deploys with ``decision.target_fpr``:
  the critical threshold calibrated on val to the FPR budget, so both sit at the same target FPR.

Evaluation: repeated stratified k-fold cross-validation (default 5 folds x 3 seeds) so every critical sample is
scored once per seed; in each fold the training part is split into train/val and the critical class keeps only
``--keep`` of its TRAINING samples (val/test stay natural). Per sparsity (each lottery-ticket round's trained
model) and arm: summed critical FN with a paired bootstrap CI, FNR, FPR, one-vs-rest AUC, accuracy, FNR at
matched FPR 1% / 5%, and per-fold wins/ties/losses of ``b`` against ``a`` and ``c``.

    python bench/class_dependent.py                        # 10-class digits (critical 8 at 25%) and binary
    python bench/class_dependent.py --variant imagefolder:data/parts --critical crack
    python bench/class_dependent.py --prune-all            # also prune the first conv and the classifier
    python bench/class_dependent.py --quick                # smoke run: 2 folds x 1 seed, 2 rounds, 2 epochs

Each fold's logits are written to ``<out>/folds/`` as soon as the fold is trained and reused by a later run with the
same settings and the same training code (edgeslim's compress sources are part of the key), so an interrupted study
continues where it stopped and a change to the scoring re-scores without training again. The report is ``<out>/results.md`` (tables),
``<out>/critical_fnr.png`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ARMS_TRAINED = ("a", "b", "b+budget")


# ------------------------------------------------------------------------------------------------- data


class _TensorSplit:
    """A split held as normalised tensors; ``labels`` is what ``DataBundle.labels`` and ``fine_tune`` read."""

    def __init__(self, x, y: np.ndarray) -> None:
        import torch

        self.x = x
        self.labels = np.asarray(y, dtype=np.int64)
        self._y = torch.from_numpy(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.x[i], int(self._y[i])

    def __getitems__(self, idx):
        return [(self.x[i], int(self._y[i])) for i in idx]

    def raw(self, n):  # DataBundle.raw_images protocol; the bench never needs raw pixels
        return []


def load_all(spec: str, image_size: int):
    """Every sample of a dataset as one normalised tensor, through edgeslim's loader (digits or imagefolder)."""
    import torch

    from edgeslim.artifact import Preprocessing
    from edgeslim.compress.data import load_data

    pre = Preprocessing(resize=image_size, crop=image_size)
    bundle = load_data(spec, preprocessing=pre, image_size=image_size, val_fraction=0.0, test_fraction=0.5, seed=0)
    xs, ys = [], []
    for split in ("train", "val", "test"):
        ds = getattr(bundle, split)
        if len(ds) == 0:
            continue
        for x, y in bundle.loader(split, batch_size=512):
            xs.append(x)
            ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys).numpy().astype(np.int64), bundle.classes, bundle.preprocessing


def fold_bundle(x, y, classes, critical: int, pre, train_idx, test_idx, *, keep: float, val_fraction: float, seed):
    """A DataBundle for one CV fold: test = the fold; the rest split into train/val; critical kept at ``keep``."""
    from sklearn.model_selection import train_test_split

    from edgeslim.compress.data import DataBundle

    tr, va = train_test_split(train_idx, test_size=val_fraction, stratify=y[train_idx], random_state=seed)
    rng = np.random.default_rng(seed)
    crit = tr[y[tr] == critical]
    if keep < 1.0:
        n_keep = max(1, int(round(keep * len(crit))))
        drop = set(rng.choice(crit, len(crit) - n_keep, replace=False).tolist())
        tr = np.array([i for i in tr if i not in drop], dtype=np.int64)
    tr, va, te = np.sort(tr), np.sort(va), np.sort(test_idx)
    counts = np.bincount(y[tr], minlength=len(classes)).tolist()
    return DataBundle(
        train=_TensorSplit(x[tr], y[tr]), val=_TensorSplit(x[va], y[va]), test=_TensorSplit(x[te], y[te]),
        classes=list(classes), critical=[critical], class_counts=counts, preprocessing=pre,
        info={"train": len(tr), "val": len(va), "test": len(te)},
    ), te


# ------------------------------------------------------------------------------------------------- training


def _context_class():
    from edgeslim.compress.metrics import predict_logits
    from edgeslim.compress.prune.base import PruneContext

    @dataclass
    class BenchContext(PruneContext):
        """edgeslim's PruneContext (whose loss schedule governs every class-dependent training with the FPR budget
        when ``loss.fpr_budget`` is set, round 1 included) plus each round's trained model scored on val and test
        (the lottery ticket only returns the last round's model)."""

        scored: dict = field(default_factory=dict)

        def train(self, model, *, tag, masks=None, gamma=None, epochs=None, select=None, on_epoch_end=None):
            res = super().train(
                model, tag=tag, masks=masks, gamma=gamma, epochs=epochs, select=select, on_epoch_end=on_epoch_end
            )
            out = {"sparsity": masks.sparsity() if masks is not None else 0.0}
            for split in ("val", "test"):
                loader = self.data.loader(split, batch_size=512)
                out[split] = predict_logits(res.model, loader)[0]
            budget = getattr(self, "_budget", None)
            if budget is not None and budget.trajectory:
                last = budget.trajectory[-1]
                out["gamma_end"] = last["gamma"]
                out["rank_weight_end"] = float(last.get("rank_weight") or 0.0)
                out["budget_held"] = bool(budget.summary()["held"])
            self.scored[tag] = out
            return res

    return BenchContext


def train_arm(arm: str, w0, data, args, run_dir: Path, seed: int) -> dict[str, dict]:
    """Run edgeslim's lottery_ticket for one arm; return ``{tag: {sparsity, val, test logits, ...}}``."""
    from edgeslim.compress.prune import PRUNE_METHODS
    from edgeslim.recipe import parse_recipe

    loss: dict[str, Any] = {"name": "cross_entropy"} if arm == "a" else {
        "name": "class_dependent", "gamma": args.gamma, "lambda": args.rank_weight, "gamma_schedule": "paper",
    }
    if arm == "b+budget":
        loss["fpr_budget"] = args.fpr_budget
    recipe = parse_recipe({
        "seed": seed,
        "data": {"batch_size": args.batch_size},
        "loss": loss,
        "train": {"epochs": args.epochs, "lr": args.lr, "momentum": 0.9, "select": "last", "threads": 1},
        "prune": {
            "method": "lottery_ticket", "rounds": args.rounds, "rate": args.rate, "scope": "layer",
            "score": "magnitude", "rewind": "init",
            "prune_first_conv": args.prune_all, "prune_classifier": args.prune_all,
        },
    })
    ctx = _context_class().from_recipe(
        recipe, model=copy.deepcopy(w0), data=data, run_dir=run_dir, resume=False, progress=False
    )
    PRUNE_METHODS.handler(recipe.prune)(recipe.prune, ctx)
    return ctx.scored


# ------------------------------------------------------------------------------------------------- scoring


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(logits: np.ndarray, y: np.ndarray, classes, c: int, thresholds=None) -> dict[str, Any]:
    from edgeslim.compress.metrics import evaluate
    from edgeslim.compress.thresholds import fnr_at_fpr

    m = evaluate(logits, y, classes, [c], thresholds=thresholds)
    pc = m.per_class[c]
    probs = _softmax(logits.astype(np.float64))
    return {
        "fn": pc["fn"], "pos": pc["tp"] + pc["fn"], "fp": pc["fp"], "neg": pc["fp"] + pc["tn"],
        "correct": int(round(m.accuracy * m.n)), "n": m.n, "auc": m.critical_stats[c]["auc"],
        "fnr@1": fnr_at_fpr(probs, y, c, 0.01), "fnr@5": fnr_at_fpr(probs, y, c, 0.05),
    }


def fn_vector(logits: np.ndarray, y: np.ndarray, c: int, thresholds=None) -> list[int]:
    """1 for every critical test sample the model misses (in test order), for the paired bootstrap."""
    from edgeslim.compress.metrics import predict

    pred = predict(_softmax(logits.astype(np.float64)), thresholds)
    return [int(p != c) for p in pred[y == c]]


def train_fold(x, y, classes, c, pre, args, seed: int, fold: int, train_idx, test_idx) -> dict[str, np.ndarray]:
    """Train every arm on one fold; return the flat array record the fold cache stores (``np.savez``):
    ``"{arm}|{tag}|val"`` / ``"|test"`` logits, ``"{arm}|{tag}|sparsity"`` (and ``"|gamma_end"``), the val and
    test labels and the test indices. Scoring reads only this, so a change to the scoring (a new arm that
    re-thresholds a trained one, a new decision rule) re-scores a finished study without training again."""
    import torch

    from edgeslim.testing import TinyNet

    data, te = fold_bundle(
        x, y, classes, c, pre, train_idx, test_idx, keep=args.keep, val_fraction=args.val_fraction,
        seed=seed * 1000 + fold,
    )
    torch.manual_seed(seed * 1000 + fold)
    w0 = TinyNet(num_classes=len(classes), width=args.width)  # W0: the same start for every arm
    arms = [a for a in ARMS_TRAINED if a != "b+budget" or args.fpr_budget > 0]
    rec: dict[str, np.ndarray] = {
        "yv": data.labels("val"), "yt": data.labels("test"), "test_idx": te, "tags": np.array([], dtype=str),
    }
    with tempfile.TemporaryDirectory(prefix="cdbench-") as tmp:
        for arm in arms:
            scored = train_arm(arm, w0, data, args, Path(tmp) / arm.replace("+", "_"), seed)
            rec["tags"] = np.array(list(scored))
            for tag, s in scored.items():
                for k, v in s.items():
                    rec[f"{arm}|{tag}|{k}"] = np.asarray(v)
    return rec


def score_fold(rec, classes, c, args, seed: int, fold: int) -> dict[str, Any]:
    """Score one fold's cached logits: every trained arm at argmax, and the re-thresholded arms.

    * ``c`` / ``c+budget``: arm ``a``'s model with its critical threshold calibrated on val to the val FPR of
      ``b`` / ``b+budget`` (the reviewer's control: the same FPR bought by a threshold alone);
    * ``b+thr`` / ``c+thr``: ``b`` and ``a`` deployed the way edgeslim deploys (``decision.target_fpr``): the
      threshold calibrated on val to the FPR budget (``--fpr-budget``), so both sit at the same target FPR.
    """
    from edgeslim.compress.thresholds import calibrate_thresholds

    yv, yt = rec["yv"], rec["yt"]
    arms = [a for a in ARMS_TRAINED if f"{a}|{rec['tags'][0]}|test" in rec]
    out: dict[str, Any] = {"seed": seed, "fold": fold, "test_idx": rec["test_idx"].tolist(), "rounds": []}

    def logits(arm, tag, split):
        return rec[f"{arm}|{tag}|{split}"]

    def calibrated(arm, tag, target_fpr):
        return calibrate_thresholds(_softmax(logits(arm, tag, "val").astype(np.float64)), yv, [c], target_fpr=target_fpr)

    for tag in rec["tags"].tolist():
        row: dict[str, Any] = {"tag": tag, "sparsity": float(rec[f"a|{tag}|sparsity"]), "arms": {}}
        for arm in arms:
            lt = logits(arm, tag, "test")
            row["arms"][arm] = score(lt, yt, classes, c) | {"fn_vec": fn_vector(lt, yt, c)}
            if f"{arm}|{tag}|gamma_end" in rec:
                row["arms"][arm]["gamma_end"] = float(rec[f"{arm}|{tag}|gamma_end"])
        derived = [(m, "a", "c" if m == "b" else "c+budget", None) for m in ("b", "b+budget") if m in arms]
        if args.fpr_budget > 0:
            derived += [(None, "b", "b+thr", args.fpr_budget), (None, "a", "c+thr", args.fpr_budget)]
        for matched, base, name, target in derived:
            if target is None:
                val = score(logits(matched, tag, "val"), yv, classes, c)
                target = val["fp"] / val["neg"]
            thr = calibrated(base, tag, target)
            lt = logits(base, tag, "test")
            row["arms"][name] = score(lt, yt, classes, c, thr) | {"fn_vec": fn_vector(lt, yt, c, thr)}
            row["arms"][name]["threshold"] = thr[c]
        out["rounds"].append(row)
    return out


# ------------------------------------------------------------------------------------------------- report


def _bootstrap(vecs: dict[str, np.ndarray], pairs, n_boot: int, seed: int = 0):
    """Paired bootstrap over (seed, critical sample): CI of each arm's summed FN and of FN reductions."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(vecs.values())))
    idx = rng.integers(0, n, size=(n_boot, n))
    sums = {a: v[idx].sum(axis=1) for a, v in vecs.items()}
    ci = {a: tuple(np.percentile(s, [2.5, 97.5]).tolist()) for a, s in sums.items()}
    red = {}
    for b, a in pairs:
        if b in sums and a in sums:
            with np.errstate(divide="ignore", invalid="ignore"):
                r = 1.0 - sums[b] / np.where(sums[a] == 0, np.nan, sums[a])
            red[(b, a)] = tuple(np.nanpercentile(r, [2.5, 97.5]).tolist()) if np.isfinite(r).any() else (None, None)
    return ci, red


def aggregate(folds: list[dict], n_boot: int) -> list[dict]:
    tags = [r["tag"] for r in folds[0]["rounds"]]
    arms = list(folds[0]["rounds"][0]["arms"])
    table = []
    for ti, tag in enumerate(tags):
        rows = [f["rounds"][ti] for f in folds]
        entry: dict[str, Any] = {"tag": tag, "sparsity": float(np.mean([r["sparsity"] for r in rows])), "arms": {}}
        vecs = {}
        for arm in arms:
            recs = [r["arms"][arm] for r in rows]
            tot = {k: sum(rec[k] for rec in recs) for k in ("fn", "pos", "fp", "neg", "correct", "n")}

            def mean(key, recs=recs):
                vals = [rec[key] for rec in recs if rec[key] is not None]
                return float(np.mean(vals)) if vals else None

            entry["arms"][arm] = {
                "fn": tot["fn"], "pos": tot["pos"], "fnr": tot["fn"] / tot["pos"], "fpr": tot["fp"] / tot["neg"],
                "accuracy": tot["correct"] / tot["n"], "auc": mean("auc"), "fnr@1": mean("fnr@1"),
                "fnr@5": mean("fnr@5"),
                "gamma_end": mean("gamma_end") if "gamma_end" in recs[0] else None,
            }
            vecs[arm] = np.concatenate([np.asarray(rec["fn_vec"], dtype=np.int64) for rec in recs])
        pairs = [
            ("b", "a"), ("b", "c"), ("b+budget", "a"), ("b+budget", "c+budget"), ("b+thr", "a"), ("b+thr", "c+thr"),
        ]
        ci, red = _bootstrap(vecs, pairs, n_boot)
        for arm in arms:
            entry["arms"][arm]["fn_ci"] = ci[arm]
        entry["reduction"] = {}
        for (b, a), rci in red.items():
            fa, fb = entry["arms"][a]["fn"], entry["arms"][b]["fn"]
            w = sum(r["arms"][b]["fn"] < r["arms"][a]["fn"] for r in rows)
            t = sum(r["arms"][b]["fn"] == r["arms"][a]["fn"] for r in rows)
            entry["reduction"][f"{b} vs {a}"] = {
                "reduction": (1 - fb / fa) if fa else None, "ci": rci,
                "wins": w, "ties": t, "losses": len(rows) - w - t,
            }
        table.append(entry)
    return table


def _f(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def markdown(variant: str, table: list[dict], meta: dict) -> str:
    lines = [f"### {variant}", "", meta["line"], ""]
    lines.append("| sparsity | arm | critical FN [95% CI] | FNR | FPR | AUC | accuracy | FNR@FPR1% | FNR@FPR5% |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for e in table:
        for arm, s in e["arms"].items():
            ci = s["fn_ci"]
            extra = ""
            if s.get("gamma_end") is not None:
                extra = f" (gamma end {s['gamma_end']:.2f})"
            lines.append(
                f"| {e['sparsity'] * 100:.2f}% | {arm}{extra} | {s['fn']}/{s['pos']} [{ci[0]:.0f}, {ci[1]:.0f}] |"
                f" {_f(s['fnr'])} | {_f(s['fpr'], '.4f')} | {_f(s['auc'], '.4f')} | {_f(s['accuracy'], '.4f')} |"
                f" {_f(s['fnr@1'])} | {_f(s['fnr@5'])} |"
            )
    lines += ["", "| sparsity | comparison | FN reduction [95% CI] | fold wins/ties/losses |", "|---:|---|---:|---:|"]
    for e in table:
        for name, r in e["reduction"].items():
            lo, hi = r["ci"]
            ci = "n/a" if lo is None else f"[{lo * 100:.0f}%, {hi * 100:.0f}%]"
            red = "n/a" if r["reduction"] is None else f"{r['reduction'] * 100:.0f}%"
            wtl = f"{r['wins']}/{r['ties']}/{r['losses']}"
            lines.append(f"| {e['sparsity'] * 100:.2f}% | {name} | {red} {ci} | {wtl} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeslim._io import atomic_write_bytes

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (variant, table) in zip(axes[0], results.items()):
        xs = [e["sparsity"] * 100 for e in table]
        for arm in table[0]["arms"]:
            ax.plot(xs, [e["arms"][arm]["fnr"] for e in table], marker="o", label=arm)
        ax.set_title(variant)
        ax.set_xlabel("sparsity of pruned layers (%)")
        ax.set_ylabel("critical-class FNR (test, CV pooled)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------- main


def training_code_fingerprint() -> str:
    """sha256 of the edgeslim sources a fold's training runs through: part of the fold cache key, so cached logits
    are never mixed with folds trained by different code (a study resumed after a change trains again)."""
    import edgeslim

    root = Path(edgeslim.__file__).parent
    h = hashlib.sha256()
    for f in sorted([*root.glob("compress/*.py"), root / "testing.py", root / "recipe.py", root / "errors.py"]):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _save_npz(path: Path, rec: dict[str, np.ndarray]) -> None:
    """Write a fold's arrays atomically (a killed run leaves no half-written cache entry)."""
    from edgeslim._io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **rec)
    atomic_write_bytes(path, buf.getvalue())


def _variants(args) -> list[tuple[str, str, bool]]:
    """(name, dataset spec, binary?) per requested variant."""
    out = []
    for v in args.variant:
        if v == "10class":
            out.append((f"digits 10-class, critical {args.critical} at {args.keep:.0%}", "digits", False))
        elif v == "binary":
            out.append((f"digits binary ({args.critical} vs rest), critical at {args.keep:.0%}", "digits", True))
        elif v.startswith("imagefolder:"):
            out.append((f"{v}, critical {args.critical} at {args.keep:.0%}", v, False))
        else:
            sys.exit(f"unknown variant '{v}': use 10class, binary or imagefolder:<dir>")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", action="append", help="10class, binary or imagefolder:<dir> (repeatable)")
    ap.add_argument("--critical", default="8", help="critical class (label); default 8")
    ap.add_argument("--keep", type=float, default=0.25, help="fraction of critical TRAINING samples kept")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5, help="pruning rounds (sparsity 1 - (1-rate)^r)")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=10, help="epochs per round")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=16, help="TinyNet width")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--val-fraction", type=float, default=0.2, help="of each fold's training part")
    ap.add_argument("--gamma", type=float, default=5.0)
    ap.add_argument("--rank-weight", type=float, default=5.0, help="lambda")
    ap.add_argument("--fpr-budget", type=float, default=0.01, help="critical FPR budget of arm b+budget (0: off)")
    ap.add_argument("--prune-all", action="store_true", help="also prune the first conv and the classifier")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("bench/results/class_dependent"))
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 folds x 1 seed, 2 rounds, 2 epochs")
    ap.add_argument(
        "--report-only", action="store_true",
        help="train nothing: report the folds already in <out>/folds (a study still running, or interrupted)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.folds, args.seeds, args.rounds, args.epochs, args.bootstrap = 2, 1, 2, 2, 200
    args.variant = args.variant or ["10class", "binary"]

    import torch
    from sklearn.model_selection import StratifiedKFold

    from edgeslim._io import atomic_write_json, atomic_write_text

    torch.set_num_threads(1)  # small model: one thread is fastest and leaves the other core free
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "variant", "bootstrap", "report_only")}
    code = training_code_fingerprint()
    results: dict[str, list[dict]] = {}
    report = [
        "## Class-dependent compression benchmark", "",
        f"TinyNet(width={args.width}) on {args.image_size}x{args.image_size} inputs; lottery ticket, rate"
        f" {args.rate}/round x {args.rounds} rounds, {args.epochs} epochs/round, SGD lr {args.lr} m 0.9, batch"
        f" {args.batch_size}, rewind to W0, per-layer magnitude, "
        + ("every layer pruned" if args.prune_all else "first conv and classifier dense")
        + f"; {args.folds}-fold stratified CV x {args.seeds} seeds; gamma 1 -> {args.gamma}, lambda {args.rank_weight}"
        + (f"; b+budget: critical FPR budget {args.fpr_budget}" if args.fpr_budget > 0 else "") + ".",
        "FN/FNR/FPR/accuracy are pooled over all test folds (each critical sample scored once per seed); AUC and"
        " FNR@FPR are means over folds; FN CI and reduction CI: paired bootstrap over (seed, critical sample);"
        " c = arm a with its critical threshold calibrated on val to b's val FPR (c+budget: to b+budget's);"
        " b+thr / c+thr = b / a deployed with the critical threshold calibrated on val to the FPR budget"
        " (edgeslim's decision rule: called 8 iff p(8) >= t).", "",
    ]
    t_start = time.perf_counter()
    for name, spec, binary in _variants(args):
        x, y, classes, pre = load_all(spec, args.image_size)
        if args.critical not in classes:
            sys.exit(f"critical class '{args.critical}' is not a class of {spec}: {classes}")
        c = classes.index(args.critical)
        if binary:
            y = (y == c).astype(np.int64)
            classes, c = ["rest", args.critical], 1
        key = hashlib.sha256(json.dumps([settings, spec, binary, code], sort_keys=True).encode()).hexdigest()[:12]
        folds = []
        for seed in range(args.seeds):
            skf = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=seed)
            for fold, (tr, te) in enumerate(skf.split(np.zeros(len(y)), y)):
                path = args.out / "folds" / f"{key}-s{seed}-f{fold}.npz"
                if path.is_file():
                    with np.load(path) as z:
                        folds.append(score_fold(dict(z), classes, c, args, seed, fold))
                    continue
                if args.report_only:
                    continue
                t0 = time.perf_counter()
                rec = train_fold(x, y, classes, c, pre, args, seed, fold, tr, te)
                _save_npz(path, rec)
                folds.append(score_fold(rec, classes, c, args, seed, fold))
                last = folds[-1]["rounds"][-1]["arms"]
                print(
                    f"[{name}] seed {seed} fold {fold}: {time.perf_counter() - t0:.0f}s; last round FN "
                    + ", ".join(f"{a} {s['fn']}" for a, s in last.items()), flush=True,
                )
        if not folds:
            print(f"[{name}] no fold results yet in {args.out / 'folds'}", flush=True)
            continue
        table = aggregate(folds, args.bootstrap)
        results[name] = table
        n_crit = int((y == c).sum())
        line = (f"{len(y)} samples, {n_crit} critical; {len(folds)} of {args.folds * args.seeds} folds scored;"
                f" classes {len(classes)}; "
                f"settings key {key}")
        report.append(markdown(name, table, {"line": line}))
    args.out.mkdir(parents=True, exist_ok=True)
    report.append(f"\nWall time of this invocation: {time.perf_counter() - t_start:.0f} s.\n")
    atomic_write_text(args.out / "results.md", "\n".join(report))
    atomic_write_json(args.out / "results.json", {"settings": settings, "results": results})
    if results:
        plot(results, args.out / "critical_fnr.png")
    print("\n".join(report))
    print(f"wrote {args.out / 'results.md'}, {args.out / 'critical_fnr.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
