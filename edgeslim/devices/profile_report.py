"""The ``edgeslim profile`` job: profile an artifact (here or behind a server) and write the report.

Accuracy, per-class recall and critical FN come from a labelled ImageFolder or the test split of the data recorded
in the artifact's recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..artifact import Manifest, load_manifest
from ..errors import ConfigError


def labelled_folder(directory: str | Path, manifest: Manifest):
    """A labelled ImageFolder (``DIR/<class>/*.jpg``) preprocessed for ``manifest``: ``(inputs, labels)``.

    Raises:
        DataError: no class folders, or a folder whose name is not one of the model's classes (did-you-mean).
    """
    import numpy as np

    from ..compress.data import IMAGE_EXTENSIONS
    from ..errors import DataError
    from ..preprocess import preprocess
    from ..registry import did_you_mean

    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"--data {root}: not a directory of class folders")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DataError(f"--data {root}: no class folders (expected {root}/<class name>/<image files>)")
    index = {c: i for i, c in enumerate(manifest.classes)}
    xs, ys = [], []
    for d in folders:
        if d.name not in index:
            raise DataError(
                f"--data {root}: folder '{d.name}' is not a class of model '{manifest.name}'."
                f"{did_you_mean(d.name, list(index))} The model's classes: {', '.join(manifest.classes[:20])}"
            )
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files:
            xs.append(preprocess(f, manifest.preprocessing)[0])
            ys.append(index[d.name])
    if not xs:
        raise DataError(f"--data {root}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def profile_to_report(
    artifact: str | Path,
    out: str | Path,
    *,
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    seconds: float | None,
    iterations: int,
    warmup: int,
    threads: int | None,
    data_dir: str | Path | None = None,
    loadgen: str | None = None,
    html: bool = True,
    progress=True,
    console=None,
    layers: bool = False,
) -> Path:
    """Profile an artifact on this machine and write report.json / report.md / report.html into ``out``.

    Accuracy, per-class recall and critical FN come from ``data_dir`` (a labelled ImageFolder) or, by default,
    the test split of the data recorded in the artifact's recipe. ``loadgen`` adds an MLPerf LoadGen run
    (``single-stream`` or ``offline``) per model file and backend; ``layers`` adds the runner's per-layer times
    (``layer_profile`` in report.json, a "Per-layer times" section in report.md). Returns the report.json path.
    """
    from .profiler import ProfileConfig, backend_class, profile_artifact
    from .report import make_report, write_report
    from .targets import detect

    manifest = load_manifest(artifact)
    if loadgen is not None and loadgen not in ("single-stream", "offline"):
        raise ConfigError(f"--loadgen '{loadgen}': use single-stream or offline")
    notes: list[str] = []
    if data_dir:
        data = labelled_folder(data_dir, manifest)
    else:
        from ..errors import MissingDependencyError, require

        try:
            # the datasets are read through torch's DataLoader: a device-side install ('edgeslim[serve]') has none
            require("torch", extra="compress", purpose="re-creating the test split of the artifact's recipe")
            from ..compress.data import recorded_data, split_arrays

            found = recorded_data(manifest)
            data = split_arrays(found[0], "test") if found is not None else None
        except MissingDependencyError as exc:  # a device-side install: measure speed, say why accuracy is missing
            data = None
            notes.append(f"Accuracy not measured: {exc}; or pass --data DIR, a labelled ImageFolder (DIR/<class>/*.png)")
            if console is not None:
                from rich.text import Text

                console.print(Text(f"warning: {notes[-1]}", style="yellow"), soft_wrap=True)
    cfg = ProfileConfig(
        warmup=warmup, iterations=iterations, seconds=2.0 if seconds is None else seconds,
        batch_sizes=tuple(batch_sizes or (1,)),
    )
    target = detect()
    entries = profile_artifact(
        artifact, backends=backends, cfg=cfg, threads=threads, data=data, progress=progress, device_state=target,
        layers=layers,
    )
    extra: dict[str, Any] = {"notes": notes} if notes else {}
    if loadgen:
        from ..runtime.base import BackendOptions
        from .loadgen import LoadGenConfig, run_loadgen

        runs = []
        for mf in manifest.models:
            for b in backends:
                cls = backend_class(b)
                if mf.format not in getattr(cls, "formats", ()):
                    continue
                with cls(Path(artifact) / mf.path, BackendOptions(threads=threads)) as be:
                    res = run_loadgen(be, cfg=LoadGenConfig(scenario=loadgen, min_duration_s=seconds or 10.0))
                res.update(model=mf.path, precision=mf.precision, backend=b)
                runs.append(res)
                if console is not None:
                    metric = (f"p90 {res.get('p90_latency_ms'):.3f} ms" if loadgen == "single-stream"
                              else f"{res.get('samples_per_second'):.1f} samples/s")
                    console.print(f"loadgen {loadgen} {mf.path} on {b}: {metric} ({res.get('result')})")
        extra["loadgen"] = runs
    report = make_report(entries, artifact_dir=artifact, target=target, extra=extra)
    return write_report(out, report, html=html)["json"]


def profile_remote_to_report(
    url: str,
    model: str,
    out: str | Path,
    *,
    batch_sizes: Sequence[int],
    seconds: float | None,
    iterations: int,
    warmup: int,
    token: str | None = None,
    concurrency: int = 1,
    html: bool = True,
) -> Path:
    """Profile a model behind an edgeslim (or any KServe v2) server over HTTP; write the report into ``out``."""
    from .profiler import ProfileConfig
    from .remote import profile_remote
    from .report import make_report, write_report

    cfg = ProfileConfig(warmup=warmup, iterations=iterations, seconds=2.0 if seconds is None else seconds)
    runs = [
        profile_remote(url, model, cfg=cfg, batch=b, token=token, concurrency=concurrency)
        for b in (batch_sizes or (1,))
    ]
    report = make_report([], title=f"edgeslim remote profile: {model} at {url}", extra={"remote": runs})
    return write_report(out, report, html=html)["json"]
