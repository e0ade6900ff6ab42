"""ELPV: accuracy against CPU minutes for each fine-tuning lever, each alone (issue 20, "Where the accuracy goes").

Every arm fine-tunes the shipped ImageNet EfficientNet-Lite0 on edgeslim's ELPV split through the project's own
``fine_tune`` (so ``train.freeze`` / ``train.cache``, the schedules and the loss options are the code under test)
and differs from the ``base`` arm in one lever:

* resolution: 96 / 128 / 160 / 192 / 224 px;
* frozen early stages (outputs cached once): none (full fine-tune), blocks.3, blocks.4, blocks.5;
* schedule: epochs 1 / 2 / 4, constant SGD (the old main job's optimizer) against AdamW one-cycle, no label
  smoothing, no class balance;
* augmentation beyond the 8 symmetries (small rotations and shifts): needs the uncached path (noted in the table);
* test-time symmetries (the 8 orientations averaged): an 8x latency cost, reported beside, not for the main job.

Per arm: val AUC, and on test (656 cells, 205 defective) AUC, top-1 (argmax), defective recall / missed cells / FPR
at the threshold calibrated on val to 5 % FPR, missed cells at 1 % FPR (val-calibrated), and the CPU seconds
(process time, both cores) and wall seconds of the training including the cache. Decisions are on val; test is
reported. Each arm's result is stored as soon as it finishes (``<out>/arms/<arm>-s<seed>.json``): a killed run
continues where it stopped.

    python bench/elpv_levers.py --arms base,res160,res128 --seeds 1 --out /tmp/levers
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

BASE: dict[str, Any] = {
    "image_size": 224, "freeze": "blocks.4", "cache": True, "epochs": 2, "optimizer": "adamw", "lr": 1e-3,
    "weight_decay": 1e-4, "schedule": "onecycle", "warmup_epochs": 0.3, "label_smoothing": 0.05, "balance": True,
    "augment": True, "tta": False,
}
ARMS: dict[str, dict[str, Any]] = {
    "base": {},
    "res96": {"image_size": 96}, "res128": {"image_size": 128}, "res160": {"image_size": 160},
    "res192": {"image_size": 192},
    "freeze_none96": {"image_size": 96, "freeze": None, "cache": False},
    "freeze3": {"freeze": "blocks.3"}, "freeze5": {"freeze": "blocks.5"},
    "epochs1": {"epochs": 1}, "epochs4": {"epochs": 4},
    "sgd_constant": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0},
    "no_smoothing": {"label_smoothing": 0.0}, "no_balance": {"balance": False},
    "tta": {"tta": True},
}


def host() -> str:
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor()
    flags = subprocess.run(["grep", "-o", "-w", "-E", "avx2|avx512f|avx512_vnni|amx_int8", "/proc/cpuinfo"],
                           capture_output=True, text=True).stdout.split()
    return f"{name}; {' '.join(sorted(set(flags)))}"


def run_arm(name: str, seed: int, data_cache: dict) -> dict[str, Any]:
    import torch

    from edgeslim.compress.data import load_data
    from edgeslim.compress.features import FeatureCache
    from edgeslim.compress.loss import build_loss
    from edgeslim.compress.metrics import predict_logits
    from edgeslim.compress.sources import load_pretrained
    from edgeslim.compress.thresholds import calibrate_thresholds, fnr_at_fpr
    from edgeslim.compress.train import fine_tune
    from edgeslim.models import split_at
    from edgeslim.recipe import LossSection, TrainSection

    cfg = {**BASE, **ARMS[name]}
    torch.manual_seed(seed)
    src = load_pretrained("efficientnet_lite0", num_classes=2)
    key = (cfg["image_size"], cfg["augment"], seed)
    if key not in data_cache:
        data_cache[key] = load_data("elpv", preprocessing=src.preprocessing, image_size=cfg["image_size"],
                                    critical=["defective"], seed=seed, augment=cfg["augment"])
    data = data_cache[key]
    if not hasattr(data, "_feature_cache"):
        data._feature_cache = FeatureCache()
    train = TrainSection(epochs=cfg["epochs"], optimizer=cfg["optimizer"], lr=cfg["lr"], momentum=0.9,
                         weight_decay=cfg["weight_decay"], schedule=cfg["schedule"], warmup_epochs=cfg["warmup_epochs"],
                         freeze=cfg["freeze"], cache=cfg["cache"], select="last")
    loss = build_loss(LossSection(name="cross_entropy", label_smoothing=cfg["label_smoothing"], balance=cfg["balance"]),
                      data.class_counts, data.critical)
    c0, t0 = time.process_time(), time.perf_counter()
    res = fine_tune(src.model, data, loss, train, seed=seed, progress=False, select="last")
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    model = res.model.eval()

    def logits(split: str, tta: bool) -> np.ndarray:
        if cfg["freeze"] and cfg["cache"]:
            probe = next(iter(data.loader(split, batch_size=2)))[0]
            prefix, suffix = split_at(model, cfg["freeze"], probe)
            feats, _ = data._feature_cache.get(prefix, data, split, symmetries=tta)
            with torch.no_grad():
                out = torch.cat([suffix(x) for x in feats.split(256)]).numpy()
        else:
            out, _ = predict_logits(model, data.loader(split, batch_size=64), device="cpu")
            out = np.asarray(out)
        if tta:  # rows: orientation j of image i at j * n + i -> mean probability over the 8
            n = len(data.labels(split))
            p = np.exp(out - out.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            return np.log(p.reshape(8, n, -1).mean(0))
        return out

    def probs(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    from sklearn.metrics import roc_auc_score

    c = data.critical[0]
    yv, yt = data.labels("val"), data.labels("test")
    pv, pt = probs(logits("val", cfg["tta"])), probs(logits("test", cfg["tta"]))
    out: dict[str, Any] = {"arm": name, "seed": seed, "config": cfg, "cpu_s": cpu, "wall_s": wall,
                           "val_auc": float(roc_auc_score(yv == c, pv[:, c])),
                           "test_auc": float(roc_auc_score(yt == c, pt[:, c])),
                           "top1": float((pt.argmax(1) == yt).mean())}
    for fpr in (0.05, 0.01):
        t = calibrate_thresholds(pv, yv, [c], target_fpr=fpr)[c]
        fired = pt[:, c] >= t
        pos = yt == c
        out[f"missed@{fpr}"] = int((pos & ~fired).sum())
        out[f"recall@{fpr}"] = float((pos & fired).sum() / pos.sum())
        out[f"fpr@{fpr}"] = float((~pos & fired).sum() / (~pos).sum())
        # top-1 under the deployed rule at this threshold (critical iff p_c >= t)
        pred = np.where(fired, c, 1 - c) if pt.shape[1] == 2 else pt.argmax(1)
        out[f"top1@{fpr}"] = float((pred == yt).mean())
    out["test_fnr_at_5pct_fpr_oracle"] = fnr_at_fpr(pt, yt, c, 0.05)
    out["history"] = [{k: h.get(k) for k in ("epoch", "loss", "val_accuracy", "val_critical_auc", "seconds")}
                      for h in res.history]
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| arm | lever | seeds | CPU min | wall min | val AUC | test AUC | top-1 (argmax) | top-1 @5% | recall @5% "
             "| missed @5% | test FPR @5% | missed @1% |", "|" + "---|" * 13]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["arm"], []).append(r)
    for arm, rs in by.items():
        def m(k: str, f: str = ".3f", rs: list[dict[str, Any]] = rs) -> str:
            v = np.array([r[k] for r in rs], dtype=float)
            if len(v) == 1:
                return format(v[0], f)
            from scipy import stats

            h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
            return f"{format(v.mean(), f)} ± {format(h, f)}"
        lever = ", ".join(f"{k}={v}" for k, v in ARMS[arm].items()) or "(base)"
        lines.append(f"| {arm} | {lever} | {len(rs)} | {np.mean([r['cpu_s'] for r in rs]) / 60:.1f} | "
                     f"{np.mean([r['wall_s'] for r in rs]) / 60:.1f} | {m('val_auc')} | {m('test_auc')} | {m('top1')} | "
                     f"{m('top1@0.05')} | {m('recall@0.05')} | {m('missed@0.05', '.1f')} | {m('fpr@0.05')} | "
                     f"{m('missed@0.01', '.1f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="base,res96,res160,epochs1,sgd_constant,tta")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default="/tmp/elpv-levers")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch intra-op threads (1 on a shared host: 2-thread OpenMP regions stall when descheduled)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "arms").mkdir(parents=True, exist_ok=True)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    data_cache: dict = {}
    rows = []
    for seed in range(args.seeds):
        for arm in arms:
            f = out / "arms" / f"{arm}-s{seed}.json"
            if f.is_file():
                rows.append(json.loads(f.read_text()))
                continue
            r = run_arm(arm, seed, data_cache)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(r, indent=1))
            tmp.replace(f)
            rows.append(r)
            print(f"{arm} seed {seed}: cpu {r['cpu_s'] / 60:.1f} min, test AUC {r['test_auc']:.3f}, top-1 {r['top1']:.3f},"
                  f" missed@5% {r['missed@0.05']}, missed@1% {r['missed@0.01']}", flush=True)
    md = f"host: {host()}\n\ncommand: python bench/elpv_levers.py --arms {args.arms} --seeds {args.seeds}\n\n{table(rows)}\n"
    (out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
