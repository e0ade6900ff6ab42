"""Accuracy in the field on ELPV: feedback and drift replayed through a live `edgeslim serve`.

Needs an ELPV artifact whose manifest stores the val reference (any export with a val split writes it); the default
is the small mono-cell model of ``bench/field-elpv.yaml``, built with ``--build``:

    python bench/field.py --build /tmp/field/elpv          # train + export it (minutes on 2 cores)
    python bench/field.py --artifact /tmp/field/elpv/compressed

Three replays, each on a fresh server (``tritonclient.http``, binary tensors, one request per cell, concurrency 1):

1. feedback: the artifact's test split with its true labels: the server's live counts (``/v2/models/M/stats``) vs
   the offline counts of the same file on the same inputs (``compress.metrics.evaluate``, the in-process runtime);
   then every poly cell (the dataset's own domain shift) with its labels: live accuracy, critical recall and the
   binomial test's flag;
2. drift on a shifted stream: ``--before`` mono test cells, then poly cells (each under a random one of the 8
   symmetries): where the first drift alarm falls after the switch;
3. drift on an unshifted stream: ``--requests`` mono test cells under the 8 symmetries, drawn at random: the alarms
   against what the test's level allows.

The cells of 2 and 3 are not in the reference (it is the val split); the model was trained with flips and quarter
turns, so the symmetries are in distribution. The figures go to stdout as markdown (bench/results/field.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(artifact: Path, **settings: object) -> Iterator[str]:
    port = free_port()
    code = textwrap.dedent(f"""
        from edgeslim.server import ServerSettings, serve
        serve(ServerSettings(models=[{str(artifact)!r}], port={port}, backend="onnxruntime", threads=1,
                             log_level="warning", grpc_port=0, **{settings!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    import httpx

    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Symmetry ``k`` (0..7) of the square images ``x`` (N, C, H, W): k % 4 quarter turns, then a flip if k >= 4."""
    y = np.rot90(x, k % 4, axes=(2, 3))
    return np.ascontiguousarray(y[..., ::-1] if k >= 4 else y)


class Client:
    def __init__(self, url: str, model: str) -> None:
        import httpx
        import tritonclient.http as httpclient

        self.httpclient = httpclient
        self.triton = httpclient.InferenceServerClient(url)
        self.http = httpx.Client(base_url=f"http://{url}", timeout=30)
        self.model = model

    def infer(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        inp = self.httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32), binary_data=True)
        res = self.triton.infer(self.model, [inp])
        return res.get_response().get("id", ""), res.as_numpy("logits")

    def feedback(self, rid: str, label: int) -> None:
        r = self.http.post(f"/v2/models/{self.model}/feedback", json={"id": rid, "label": int(label)})
        if r.status_code != 200:
            raise SystemExit(f"feedback refused: {r.status_code} {r.text}")

    def report(self) -> dict:
        return self.http.get(f"/v2/models/{self.model}/feedback").json()


def wait_checks(client: Client, checks: int, timeout: float = 30.0) -> dict:
    """The report once the drift tests of every full window have run (they run in a worker thread)."""
    deadline = time.monotonic() + timeout
    while True:
        rep = client.report()
        if rep["drift"].get("checks", 0) >= checks or time.monotonic() > deadline:
            return rep
        time.sleep(0.1)


def load_splits(artifact: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The artifact's own mono splits (its recorded recipe) and the poly cells of the same data set."""
    from edgeslim.artifact import load_manifest
    from edgeslim.compress.data import load_data_from_recipe, recorded_data, split_arrays

    m = load_manifest(artifact)
    found = recorded_data(m)
    if found is None:
        raise SystemExit(f"{artifact} records no recipe: cannot re-create its data")
    data, recipe = found
    if recipe.data.dataset != "elpv" or recipe.data.elpv.modules != "mono":
        raise SystemExit("bench/field.py expects an ELPV model trained on mono cells (bench/field-elpv.yaml)")
    out = {s: split_arrays(data, s) for s in ("val", "test")}
    poly_section = recipe.data.model_copy(update={"elpv": recipe.data.elpv.model_copy(update={"modules": "poly"})})
    poly = load_data_from_recipe(poly_section, m.preprocessing, seed=recipe.seed)
    px, py = zip(*(split_arrays(poly, s) for s in ("val", "test")))
    out["poly"] = (np.concatenate(px), np.concatenate(py))
    return out


def offline(artifact: Path, x: np.ndarray, y: np.ndarray):
    from edgeslim import runtime
    from edgeslim.compress.metrics import evaluate

    with runtime.load(artifact, backend="onnxruntime", threads=1) as p:
        logits = np.concatenate([p.backend.infer(x[i : i + 1])["logits"] for i in range(len(x))])
        m = p.manifest
    return evaluate(logits, y, m.classes, m.critical, thresholds={int(k): v for k, v in m.thresholds.items()},
                    rule=m.decision_rule), m


def replay_feedback(artifact: Path, name: str, x: np.ndarray, y: np.ndarray) -> dict:
    with server(artifact, feedback_pending=len(x) + 10, feedback_window=len(x)) as url:
        c = Client(url, name)
        for i in range(len(x)):
            rid, _ = c.infer(x[i : i + 1])
            c.feedback(rid, y[i])
        return c.report()


def stream(artifact: Path, name: str, x: np.ndarray, window: int) -> dict:
    with server(artifact, drift_window=window) as url:
        c = Client(url, name)
        t0 = time.perf_counter()
        for i in range(len(x)):
            c.infer(x[i : i + 1])
        seconds = time.perf_counter() - t0
        rep = wait_checks(c, len(x) // window)
        rep["seconds"] = seconds
        return rep


def record_cost(artifact: Path, x: np.ndarray, n: int = 20000) -> float:
    """Microseconds one FieldMonitor.record call takes for a batch-1 ELPV request (no server around it)."""
    from edgeslim import runtime
    from edgeslim.server.monitor import FieldMonitor

    with runtime.load(artifact, backend="onnxruntime", threads=1) as p:
        out = p.backend.infer(x[:1])
        mon = FieldMonitor(p.manifest, p.model_file, input_name="input", output_name="logits", drift_window=200,
                           drift_every=10**9)
    feeds = {"input": x[:1]}
    t0 = time.perf_counter()
    for _ in range(n):
        mon.record(None, feeds, out)
    return (time.perf_counter() - t0) / n * 1e6


def host() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    flags = set(Path("/proc/cpuinfo").read_text().split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(isa)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="an ELPV mono-cell artifact with a val reference")
    ap.add_argument("--build", type=Path, help="train and export bench/field-elpv.yaml into this directory first")
    ap.add_argument("--before", type=int, default=1000, help="mono requests before the switch to poly")
    ap.add_argument("--after", type=int, default=1000, help="poly requests after the switch")
    ap.add_argument("--requests", type=int, default=10000, help="requests of the unshifted stream")
    ap.add_argument("--window", type=int, default=200, help="the server's drift window (= drift_every)")
    ap.add_argument("--alpha", type=float, default=0.01, help="the server's monitor_alpha (its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost-only", action="store_true", help="only the monitoring's cost (on/off A/B at c=1)")
    ap.add_argument("--rounds", type=int, default=3, help="cost: fresh servers, each serving the model three times"
                    " (one copy unmonitored, the role rotating)")
    ap.add_argument("--cost-requests", type=int, default=2000, help="cost: requests per copy and round")
    args = ap.parse_args()
    if args.build:
        from edgeslim.pipeline import run_pipeline
        from edgeslim.recipe import load_recipe

        run_pipeline(load_recipe(str(HERE / "field-elpv.yaml")), args.build, progress=False,
                     stages=("compress", "export"))
        args.artifact = args.artifact or args.build / "compressed"
    if args.artifact is None:
        raise SystemExit("give --artifact (or --build DIR)")
    from scipy.stats import binom

    from edgeslim.artifact import load_manifest

    art = args.artifact
    m = load_manifest(art)
    ref, note = m.field_reference(m.model("onnx"))
    if ref is None:
        raise SystemExit(f"{art}: the ONNX file has no val reference ({note})")
    splits = load_splits(art)
    rng = np.random.default_rng(args.seed)
    tx, ty = splits["test"]
    if args.cost_only:
        return print_cost(art, tx, rounds=args.rounds, requests=args.cost_requests)
    px, py = splits["poly"]
    print(f"# bench/field.py on {art.name} ({m.arch or m.source}, input {m.input.shape}), host: {host()}\n")
    print(f"command: `python bench/field.py --artifact {art}` (window {args.window}, alpha {args.alpha}); val reference:"
          f" {ref.samples} mono val cells; test {len(ty)} mono cells; poly {len(py)} cells (val + test of a poly split)\n")

    # 1. feedback
    crit = m.critical[0]
    cname = m.classes[crit]
    rows = []
    for label, (x, y) in (("mono test", (tx, ty)), ("poly (shift)", (px, py))):
        off, _ = offline(art, x, y)
        live = replay_feedback(art, m.name, x, y)["feedback"]
        c = live["critical"][cname]
        same = live["confusion"] == np.asarray(off.confusion).tolist()
        rows.append(f"| {label} | {len(y)} | {live['accuracy']:.3f} | {off.accuracy:.3f} | {c['recall']:.3f} |"
                    f" {c['validated_recall']:.3f} | {c['missed']} / {off.per_class[crit]['fn']} |"
                    f" {c['false_alarms']} / {off.per_class[crit]['fp']} | {c.get('pvalue', float('nan')):.2g} |"
                    f" {live['flag']} | {'equal' if same else 'DIFFERENT'} |")
        print(f"{label}: live confusion {live['confusion']} offline {np.asarray(off.confusion).tolist()}",
              file=sys.stderr)
    print("## 1. Feedback: live counts vs the offline counts of the same file\n")
    print(f"| replay | cells | live acc | offline acc | live {cname} recall | val recall (manifest) | missed live /"
          " offline | false alarms live / offline | binomial p | recall flag | confusion matrix |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nPer-class recall and the critical FN are in the rows above (critical class: {cname}).\n")

    # 2. drift on a shifted stream
    mono = dihedral_stream(tx, args.before, rng)
    poly = dihedral_stream(px, args.after, rng)
    rep = stream(art, m.name, np.concatenate([mono, poly]), args.window)["drift"]
    alarms = rep["alarm_items"]
    pre = [a for a in alarms if a <= args.before]
    post = [a - args.before for a in alarms if a > args.before]
    print("## 2. Drift on a shifted stream (mono, then poly cells)\n")
    print(f"{args.before} mono test cells then {args.after} poly cells, each under a random symmetry; KS tests every"
          f" {args.window} items at level {rep['level']:.4g} (alpha {args.alpha} / {len(rep['features'])} features,"
          " Bonferroni).\n")
    print(f"- alarms before the switch: {len(pre)} of {args.before // args.window} checks")
    print(f"- first alarm after the switch: item {post[0] if post else 'none'} after it (the first window entirely"
          f" after the switch ends at item {args.window * -(-args.before // args.window) + args.window - args.before});"
          f" alarms after it: {len(post)} of {len(alarms) and rep['checks'] - args.before // args.window} checks")
    print("- last check: " + ", ".join(f"{k} D={v['statistic']:.3f} p={v['pvalue']:.2g}"
                                       for k, v in rep["features"].items()) + "\n")

    # 3. drift on an unshifted stream
    x = dihedral_stream(tx, args.requests, rng)
    r = stream(art, m.name, x, args.window)
    d = r["drift"]
    checks = d["checks"]
    print("## 3. Drift on an unshifted stream\n")
    print(f"{args.requests} requests: mono test cells (not in the reference) under random symmetries, drawn with"
          f" replacement; {checks} disjoint windows of {args.window}, each tested at family level {args.alpha}:"
          f" {d['alarms']} alarm(s) (expected at most {checks * args.alpha:.2f}; the level allows at most"
          f" {int(binom.ppf(0.99, checks, args.alpha))} at 99 %). Replayed at {args.requests / r['seconds']:.0f}"
          " requests/s (c=1, tritonclient.http).\n")
    print_cost(art, tx, rounds=args.rounds, requests=args.cost_requests)
    json.dump({"pre": pre, "post": post, "unshifted_alarms": d["alarms"], "checks": checks}, sys.stderr)


def print_cost(art: Path, tx: np.ndarray, *, rounds: int = 3, requests: int = 2000) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from server import monitoring_cost, print_monitoring_cost  # bench/server.py: the same measurement

    print("## 4. Cost per request\n")
    print(f"In process: FieldMonitor.record {record_cost(art, tx):.1f} us per batch-1 request (id, logits copied, input"
          " mean and std; the server runs it after the answer has left, and the drift tests in a worker thread).")
    res = monitoring_cost(art, tx[:64], rounds=rounds, requests=requests,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    print_monitoring_cost(res, "Live, onnxruntime 1 thread, tritonclient.http: ")


def dihedral_stream(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(x), n)
    ks = rng.integers(0, 8, n)
    return np.stack([dihedral(x[i : i + 1], int(k))[0] for i, k in zip(idx, ks)])


if __name__ == "__main__":
    main()
