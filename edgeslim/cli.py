"""The ``edgeslim`` command line: parse, call the public API, print.

Every error is one red line and exit code 1; ``--debug`` shows the traceback. Heavy libraries are imported
inside the commands so ``edgeslim --help`` stays fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="edgeslim",
    help="Compress a pretrained image model (pruning + INT8 with a class-dependent loss), export it to "
    "ONNX / OpenVINO / TensorRT, serve it over KServe v2 and profile it on the device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
report_app = typer.Typer(help="Work with profiling reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")

console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from ._version import __version__

        console.print(f"edgeslim {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any error into one red line and exit code 1 (the traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red] (a run directory resumes with --resume)")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI boundary
            if _state["debug"]:
                err_console.print_exception()
            from .errors import EdgeslimError

            kind = "error" if isinstance(exc, EdgeslimError) else f"internal error ({type(exc).__name__})"
            hint = "" if isinstance(exc, EdgeslimError) or _state["debug"] else " (run with --debug for the traceback)"
            from rich.text import Text

            # the message is plain text: "[tensorrt]" in a pip hint must not be read as rich markup
            err_console.print(Text(f"{kind}: {exc}{hint}", style="red"), soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _csv(value: Optional[str]) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _duration(value: Optional[str]) -> Optional[float]:
    """'10s', '500ms', '2m' or a plain number of seconds."""
    if value is None:
        return None
    v = value.strip().lower()
    from .errors import ConfigError

    try:
        if v.endswith("ms"):
            return float(v[:-2]) / 1000
        if v.endswith("s"):
            return float(v[:-1])
        if v.endswith("m"):
            return float(v[:-1]) * 60
        return float(v)
    except ValueError:
        raise ConfigError(f"duration '{value}' is not understood; use e.g. 10s, 500ms or 2m") from None


# --------------------------------------------------------------------------------------------------------------
@app.command()
@_handled
def pipeline(
    recipe: Optional[str] = typer.Argument(
        None, help="Recipe YAML file or built-in recipe name (default: the embedded 'default' recipe)."
    ),
    out: Path = typer.Option(Path("edgeslim-out"), "--out", "-o", help="Output directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in OUT from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Compress, export, validate and profile in one go: the main job.

    Writes the dense and compressed artifacts, the resolved recipe, report.json and report.md to OUT and prints
    a summary table (dense vs compressed: accuracy, critical-class FN / FNR / AUC, sparsity, parameters, size,
    latency per backend).
    """
    from .pipeline import run_pipeline
    from .recipe import load_recipe
    from .summary import print_summary

    r = load_recipe(recipe)
    result = run_pipeline(r, out, resume=resume, progress=progress, console=console)
    print_summary(result, console=console)
    _exit_if_partial(result.failed)


def _exit_if_partial(failed: list[dict[str, Any]]) -> None:
    """One line for a run that wrote its artifacts without every format, and exit code 3 (a script can tell)."""
    if not failed:
        return
    from rich.text import Text

    from .pipeline import EXIT_PARTIAL

    what = ", ".join(f"{f.get('model', '')}{'/' if f.get('model') else ''}{f['format']}/{f['precision']}" for f in failed)
    err_console.print(Text(f"partial: {what} left out (reasons in report.md and each manifest's validation.failed);"
                           f" exit code {EXIT_PARTIAL}", style="yellow"), soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL)


@app.command()
@_handled
def compress(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file or built-in recipe name."),
    out: Path = typer.Option(Path("edgeslim-out"), "--out", "-o", help="Output directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in OUT from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Fine-tune with pruning (no export, no profile); writes OUT/compressed with the torch weights."""
    from .pipeline import run_pipeline
    from .recipe import load_recipe

    r = load_recipe(recipe)
    run_pipeline(r, out, resume=resume, progress=progress, console=console, stages=("compress",))
    from .compress.distributed import is_main

    if is_main():
        console.print(f"compressed model written to {out / 'compressed'}")


@app.command()
@_handled
def search(
    recipe: Optional[str] = typer.Argument(None, help="Base recipe (YAML file or built-in name); its search: section "
                                           "gives defaults for the options below."),
    out: Path = typer.Option(Path("edgeslim-search"), "--out", "-o", help="Output directory (rerun to resume)."),
    target: Optional[str] = typer.Option(
        None, "--target", help="auto, a name from `edgeslim devices`, or the URL of `edgeslim serve --model-control "
        "explicit` on the device (every candidate is then timed and scored there)."
    ),
    token: Optional[str] = typer.Option(None, "--token", envvar="EDGESLIM_TOKEN",
                                        help="Bearer token of a remote --target's server."),
    isa: Optional[str] = typer.Option(None, "--isa", help="Cap the CPU runtime's ISA (oneDNN), e.g. sse41."),
    latency_ms: Optional[float] = typer.Option(None, "--latency-ms", help="Batch-1 p90 latency budget (ms)."),
    throughput: Optional[float] = typer.Option(None, "--throughput", help="Or a batch-1 throughput budget (img/s)."),
    latency_fraction: Optional[float] = typer.Option(
        None, "--latency-fraction", help="Or p90 at most this fraction of the dense model's (0.5: twice as fast), the "
        "dense architecture timed beside each candidate."),
    max_critical_fn: Optional[int] = typer.Option(None, "--max-critical-fn", help="Most critical FN on val."),
    max_critical_fnr: Optional[float] = typer.Option(None, "--max-critical-fnr", help="Or most critical FNR ..."),
    max_extra_critical_fn: Optional[int] = typer.Option(
        None, "--max-extra-critical-fn", help="Most critical FN on val above the dense reference's (0: no more)."),
    max_extra_critical_fnr: Optional[float] = typer.Option(
        None, "--max-extra-critical-fnr", help="Or most critical FNR above dense's, at --at-fpr on val."),
    at_fpr: Optional[float] = typer.Option(None, "--at-fpr", help="... at this critical FPR on val."),
    max_top1_drop: Optional[float] = typer.Option(None, "--max-top1-drop", help="Largest val top-1 drop vs dense."),
    max_size_mb: Optional[float] = typer.Option(None, "--max-size-mb", help="Largest deployed model file (MB)."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall time of the search (30m, 600s)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Most candidates tried."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL shared by several processes "
                                          "or hosts (default: sqlite in OUT)."),
    worker: bool = typer.Option(False, "--worker", help="Only run trials (an extra process on a shared storage)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Find the compression that meets a latency and a critical-class budget, measured on the target.

    Writes OUT/front.json, OUT/report.html (with the Pareto front), OUT/chosen-recipe.yaml (re-run it with
    `edgeslim pipeline`), OUT/artifact and OUT/ruled-out.txt. A killed search resumes when run again.
    """
    from .recipe import load_recipe
    from .search.config import SearchSection

    r = load_recipe(recipe)
    given = {"target": target, "isa": isa, "latency_ms": latency_ms, "throughput": throughput,
             "latency_fraction": latency_fraction,
             "max_critical_fn": max_critical_fn, "max_critical_fnr": max_critical_fnr, "at_fpr": at_fpr,
             "max_extra_critical_fn": max_extra_critical_fn, "max_extra_critical_fnr": max_extra_critical_fnr,
             "max_top1_drop": max_top1_drop, "max_size_mb": max_size_mb, "time_budget_s": _duration(time_budget),
             "trials": trials, "storage": storage}
    data = (r.search.model_dump() if r.search is not None else {}) | {k: v for k, v in given.items() if v is not None}
    for budget in ("latency_ms", "throughput", "latency_fraction"):  # the one given here replaces the recipe's
        if given[budget] is not None:
            for other in {"latency_ms", "throughput", "latency_fraction"} - {budget}:
                data.pop(other, None)
    if max_critical_fn is not None:
        data.pop("max_critical_fnr", None)
    if max_critical_fnr is not None:
        data.pop("max_critical_fn", None)
    if max_extra_critical_fn is not None:
        data.pop("max_extra_critical_fnr", None)
    if max_extra_critical_fnr is not None:
        data.pop("max_extra_critical_fn", None)
    from pydantic import ValidationError

    from .errors import ConfigError

    try:
        section = SearchSection.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("invalid search options: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'search'}: {e['msg']}" for e in exc.errors())) from None
    from .search.engine import search as run_search

    res = run_search(r, out, section=section, progress=progress, console=console, workers_only=worker, token=token)
    if worker:
        console.print(f"worker done; results in the storage ({section.storage or out})")
        return
    p = res.pick or {}
    t = p.get("test") or {}
    console.print(f"pick: {p.get('label')}: p90 {p.get('latency_ms', float('nan')):.3f} ms on {res.target['name']}; "
                  f"test (exported file) top-1 {t.get('top1', float('nan')):.4f}, critical FN {t.get('critical_fn')}; "
                  f"{res.seconds:.0f} s; outputs in {out} (report.html, front.json, chosen-recipe.yaml, artifact/)")


@app.command("export")
@_handled
def export_cmd(
    artifact: Path = typer.Argument(..., help="An artifact directory (e.g. OUT/compressed from `edgeslim compress`)."),
    to: str = typer.Option("onnx,openvino", "--to", help="Comma-separated exporters (onnx, openvino, tensorrt, ...)."),
    precision: str = typer.Option("fp32", "--precision", help="Comma-separated precisions: fp32, fp16, int8."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output artifact directory (default: in place)."),
) -> None:
    """Export an artifact's model to more formats (validated against the PyTorch reference)."""
    from .artifact import load_manifest
    from .export import export_existing

    if not load_manifest(artifact).recipe:
        console.print("[yellow]the artifact records no recipe: exports are checked for parity only[/yellow]")
    m = export_existing(artifact, out or artifact, formats=_csv(to), precisions=_csv(precision),
                        data_from_recipe=True)
    from rich.text import Text

    for e in (m.validation or {}).get("errors", []):
        err_console.print(Text(f"warning: {e.get('exporter')}/{e.get('precision')} not exported: {e.get('error')}",
                               style="yellow"), soft_wrap=True)
    console.print(f"exported {', '.join(f'{x.format}/{x.precision}' for x in m.models)} to {out or artifact}")
    _exit_if_partial((m.validation or {}).get("failed", []))


@app.command()
@_handled
def profile(
    artifact: str = typer.Argument(..., help="Artifact directory (with --remote: the served model's name)."),
    backends: str = typer.Option("onnxruntime,openvino", "--backends", help="Comma-separated runtime backends."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes."),
    duration: Optional[str] = typer.Option(None, "--duration", help="Measured window per run, e.g. 10s (default 2s)."),
    iterations: int = typer.Option(100, "--iterations", help="At least this many measured iterations."),
    warmup: int = typer.Option(10, "--warmup", help="Warm-up iterations."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Labelled ImageFolder for accuracy (default: the test split of the artifact's recipe)."
    ),
    loadgen: Optional[str] = typer.Option(None, "--loadgen", help="Also run MLPerf LoadGen: single-stream or offline."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Profile a model served at this URL (KServe v2)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EDGESLIM_TOKEN", help="Bearer token for --remote."),
    concurrency: int = typer.Option(1, "--concurrency", help="Requests in flight for --remote throughput."),
    html: bool = typer.Option(True, "--html/--no-html", help="Also write report.html with plots."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Where report.json / report.md / report.html go."),
    layers: bool = typer.Option(
        False, "--layers", help="Also time every layer with the runtime's own profiler (OpenVINO counters, ONNX"
        " Runtime profiler, TensorRT IProfiler): the slowest layers, time per op type, their sum against end to end."
    ),
    top: int = typer.Option(15, "--top", min=1, help="With --layers: how many of the slowest layers to print."),
) -> None:
    """Measure latency percentiles, throughput, memory, power and per-class accuracy, one report per target."""
    from .devices.profile_report import profile_remote_to_report, profile_to_report

    batches = [int(b) for b in _csv(batch)]
    if remote and layers:
        from .errors import ConfigError

        raise ConfigError("--layers reads the runtime's per-layer profiler here; a server does not expose it."
                          " Profile the artifact directory on the device instead of --remote")
    if remote:
        path = profile_remote_to_report(
            remote, artifact, out, batch_sizes=batches, seconds=_duration(duration), iterations=iterations,
            warmup=warmup, token=token, concurrency=concurrency, html=html,
        )
    else:
        with console.status("profiling ...") as status:
            path = profile_to_report(
                Path(artifact), out, backends=_csv(backends), batch_sizes=batches, seconds=_duration(duration),
                iterations=iterations, warmup=warmup, threads=threads, data_dir=data, loadgen=loadgen, html=html,
                progress=lambda line: (status.update(line), console.print(line, highlight=False)), console=console,
                layers=layers,
            )
        if layers:
            from rich.markdown import Markdown

            from .devices.markdown import render_layers
            from .devices.report import load_report

            console.print(Markdown(render_layers(load_report(path).get("entries") or [], top=top)))
    console.print(f"report written to {path} (and report.md{', report.html' if html else ''})")


@app.command()
@_handled
def recipes(name: Optional[str] = typer.Argument(None, help="Print this built-in recipe (resolved).")) -> None:
    """List the built-in recipes, or print one resolved with every default."""
    from .recipe import builtin_recipes, load_recipe

    if name is None:
        for n in builtin_recipes():
            console.print(n)
    else:
        console.print(load_recipe(name, check_names=False).to_yaml(), highlight=False, markup=False)


def _cpu_list(value: Optional[str]) -> Optional[tuple]:
    """``"0,2-3"`` -> ``(0, 2, 3)``; a clear error for anything else."""
    from .errors import ConfigError

    if not value:
        return None
    cpus = []
    try:
        for part in _csv(value):
            lo, _, hi = part.partition("-")
            cpus += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise ConfigError(f"--inference-cpus {value!r}: give CPU indices like 0,1 or 2-3") from None
    return tuple(cpus)


@app.command()
@_handled
def serve(
    models: Optional[List[Path]] = typer.Argument(
        None, help="Artifact directories, or directories of artifacts (none: only with --model-control explicit)."
    ),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="openvino, onnxruntime, tensorrt or torch (default: the file each artifact's manifest"
        " recommends for this target, written by `edgeslim pipeline`; else onnxruntime).",
    ),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: most precise)."),
    device: str = typer.Option("cpu", "--device", help="Backend device (cpu, cuda:0, GPU, AUTO, ...)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads per model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback unless told otherwise)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    grpc_port: int = typer.Option(
        8001, "--grpc-port", help="gRPC port (inference.GRPCInferenceService, as Triton's), beside REST; 0 = off."
    ),
    max_batch: int = typer.Option(8, "--max-batch", help="Dynamic batching: largest batch."),
    batch_delay_ms: float = typer.Option(2.0, "--batch-delay-ms", help="Dynamic batching: max queue delay."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Run each request on its own."),
    queue_size: int = typer.Option(64, "--queue-size", help="Pending requests before 503 + Retry-After."),
    timeout: float = typer.Option(30.0, "--timeout", help="Per-request timeout in seconds."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="EDGESLIM_TOKEN", help="Require 'Authorization: Bearer TOKEN' (all but health)."
    ),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body accepted."),
    backend_option: List[str] = typer.Option(
        [], "--backend-option", "-O",
        help="Backend option KEY=VALUE (repeatable), e.g. -O hint=THROUGHPUT for openvino, or "
        "-O session_config:session.intra_op.allow_spinning=1 for onnxruntime.",
    ),
    inference_cpus: Optional[str] = typer.Option(
        None, "--inference-cpus",
        help="Pin inference to these CPUs (Linux), e.g. 2,3; the HTTP event loop keeps the others.",
    ),
    shared_memory: bool = typer.Option(
        False, "--shared-memory",
        help="Let clients on this machine pass tensors through /dev/shm (Triton's system shared-memory extension).",
    ),
    busy_poll_us: int = typer.Option(
        0, "--busy-poll-us",
        help="After the last request, poll the sockets this long instead of sleeping (lower latency for a "
        "one-at-a-time client, one core busy meanwhile); 0 = off.",
    ),
    model_control: str = typer.Option(
        "none", "--model-control",
        help="none: serve the given artifacts; explicit: also load/unload (and upload) models over Triton's "
        "repository API, e.g. for `edgeslim search --target http://THIS:PORT` (needs --token off loopback).",
    ),
    upload_dir: Optional[Path] = typer.Option(
        None, "--upload-dir", help="Where uploaded artifacts go (default: a temporary directory removed at exit)."
    ),
    max_upload_mb: float = typer.Option(512.0, "--max-upload-mb", help="Largest model load request (base64 files)."),
    field_monitoring: bool = typer.Option(
        True, "--field-monitoring/--no-field-monitoring",
        help="Feedback counts (POST /v2/models/M/feedback) and drift tests against the model file's val reference.",
    ),
    feedback_pending: int = typer.Option(10_000, "--feedback-pending", help="Answers kept awaiting feedback, per model."),
    feedback_window: int = typer.Option(1_000, "--feedback-window", help="Judged items the live counts cover."),
    drift_window: int = typer.Option(200, "--drift-window", help="Recent items each drift test compares with val."),
    drift_every: Optional[int] = typer.Option(None, "--drift-every", help="Items between drift tests (default: window)."),
    monitor_alpha: float = typer.Option(0.01, "--monitor-alpha", help="Level of the recall and drift tests."),
) -> None:
    """Serve artifacts over KServe v2 / Open Inference Protocol (tritonclient and perf_analyzer work)."""
    from .server import ServerSettings, serve as _serve
    from .server.settings import LOOPBACK, RECOMMENDED, parse_backend_options

    settings = ServerSettings(
        backend_options=_backend_options(backend, parse_backend_options(backend_option)) if backend_option else {},
        models=tuple(models or ()), backend=backend or RECOMMENDED, precision=precision, device=device, threads=threads, host=host,
        port=port, grpc_port=grpc_port, max_batch=max_batch, dynamic_batching=not no_batching, batch_delay_ms=batch_delay_ms,
        queue_size=queue_size, request_timeout_s=timeout, token=token, max_body_bytes=int(max_body_mb * 2**20),
        inference_cpus=_cpu_list(inference_cpus), shared_memory=shared_memory, busy_poll_us=busy_poll_us,
        model_control=model_control, upload_dir=upload_dir,  # type: ignore[arg-type]  # checked by ServerSettings
        max_upload_bytes=int(max_upload_mb * 2**20),
        field_monitoring=field_monitoring, feedback_pending=feedback_pending, feedback_window=feedback_window,
        drift_window=drift_window, drift_every=drift_every, monitor_alpha=monitor_alpha,
    )
    if host not in LOOPBACK and not token:
        err_console.print(f"[yellow]warning: serving on {host} without --token: anyone who reaches it can use it[/yellow]")
    _serve(settings)


def _backend_options(backend: str | None, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--backend-option`` as ServerSettings takes it: options are one backend's, so it must be named."""
    from .errors import ConfigError

    if backend is None:
        raise ConfigError("--backend-option needs --backend: options are backend-specific (e.g. --backend openvino"
                          " -O hint=THROUGHPUT), and without --backend each artifact is served on its recommended"
                          " backend")
    return {backend: options}


@app.command()
@_handled
def devices(
    as_json: bool = typer.Option(False, "--json", help="Print the detection as JSON."),
) -> None:
    """Detect the hardware target this runs on and list the known targets."""
    import json

    from rich.table import Table

    from .devices.targets import detect, list_targets

    found = detect()
    if as_json:
        console.print_json(json.dumps({"detected": found, "targets": list_targets()}, default=str))
        return
    prof = found.get("profile") or {}
    console.print(f"[bold]detected:[/bold] {found.get('title')} ({found.get('name')}) - {found.get('why')}")
    cpu = found.get("cpu") or {}
    console.print(
        f"cpu: {cpu.get('model')}, {cpu.get('physical_cores')} cores / {cpu.get('logical_cores')} threads,"
        f" ISA: {', '.join(k for k, v in (cpu.get('isa') or {}).items() if v) or '-'}"
    )
    if prof:
        console.print(f"recommended: backend {prof.get('backend')}, precision {prof.get('precision')}")
    table = Table(title="known targets")
    for col in ("name", "title", "backend", "precision", "TensorRT", "DLA", "2:4"):
        table.add_column(col)
    for t in list_targets():
        table.add_row(
            t["name"], t["title"], str(t.get("backend")), str(t.get("precision")), str(t.get("tensorrt") or "-"),
            str(t.get("dla") or "-"), "yes" if t.get("sparsity_2_4") else "-",
        )
    console.print(table)


@report_app.command("compare")
@_handled
def report_compare(
    reports: List[Path] = typer.Argument(..., help="report.json files (or directories holding one), two or more."),
    out: Path = typer.Option(Path("fleet-report"), "--out", "-o", help="Where the merged report.json/md/html go."),
    title: Optional[str] = typer.Option(None, "--title", help="Heading of the merged page."),
) -> None:
    """Merge reports from several targets into one table and one page (the fleet view)."""
    from .devices.report import compare_reports

    merged = compare_reports(reports, out_dir=out, title=title)
    console.print(f"merged {len(merged.get('sources', []))} reports into {out}/report.html (and .json, .md)")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
