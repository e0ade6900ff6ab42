"""Where a search times and scores a file: in this process, or on the device behind a remote edgeslim server.

The search measures three things on its target: each architecture's batch-1 latency, each fine-tuned candidate's
scores on val (its critical FN at the file's calibrated threshold decides feasibility), and the pick's scores on
test. :class:`LocalSite` runs the file with :mod:`edgeslim.runtime` here; :class:`RemoteSite` uploads the artifact
to a server started with ``--model-control explicit`` (Triton's ``load`` with ``file:`` parameters, sent by
``tritonclient``'s ``load_model``), times it there as ``edgeslim profile --remote`` does (the request end to end,
network included; the server's own compute time is kept beside it), scores the split through the same KServe v2
inference requests a client sends, and unloads it. Scores then come from the device's own kernels: an INT8 file
that rounds differently without VNNI is judged as it runs there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..errors import BackendError, ExportError

if TYPE_CHECKING:  # pragma: no cover
    from .target import SearchTarget

__all__ = ["LocalSite", "RemoteSite", "Site", "make_site", "require_file", "scores", "judge"]


class LocalSite:
    """This host: the runtime in this process (OpenVINO, ONNX Runtime, TensorRT, torch)."""

    remote = False

    def __init__(self, backend: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.backend, self.device, self.threads = backend, device, threads

    def latency(self, artifact: Path, precision: str, cfg: Any) -> dict[str, Any]:
        """The profiler's batch-1 result for the artifact's ``precision`` file (``latency_ms`` p90 / median ...)."""
        from ..devices.profiler import profile_backend
        from ..runtime import load

        with load(artifact, backend=self.backend, precision=precision, device=self.device,
                  threads=self.threads) as pred:
            return profile_backend(pred.backend, batch=1, cfg=cfg)

    def paired_latency(self, artifact: Path, precision: str, reference: tuple[Path, str],
                       cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The file and ``reference`` (artifact, precision) timed side by side in one window
        (:func:`edgeslim.devices.measure.paired_latency`): ``(file's result, reference's result)``."""
        from ..devices.measure import paired_latency
        from ..runtime import load
        from .latency import paired_window

        with load(artifact, backend=self.backend, precision=precision, device=self.device,
                  threads=self.threads) as pred, \
                load(reference[0], backend=self.backend, precision=reference[1], device=self.device,
                     threads=self.threads) as ref:
            res, ref_res = paired_latency([pred.backend, ref.backend], **paired_window(cfg))
        return res, ref_res

    def logits(self, artifact: Path, precision: str, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """The file's outputs on ``x`` and the manifest as the file deploys (its own thresholds)."""
        from ..runtime import load

        with load(artifact, backend=self.backend, precision=precision, threads=self.threads,
                  device=self.device) as pred:
            return pred.infer(x), pred.manifest


class RemoteSite:
    """A remote edgeslim server under explicit model control: every file is uploaded, measured and unloaded there.

    Args:
        url: ``host:port`` or ``http(s)://host:port``.
        token: the server's bearer token (``EDGESLIM_TOKEN``).
        backend: the backend the server serves with (its ``/v2/edgeslim/device`` answer).
        timeout_s: connection and network timeout; an upload of a large artifact gets ten times this.
    """

    remote = True
    _seq = itertools.count()

    def __init__(self, url: str, *, token: str | None = None, backend: str = "openvino",
                 timeout_s: float = 60.0) -> None:
        self.url, self.token, self.backend, self.timeout_s = url, token, backend, timeout_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _client(self, timeout_s: float | None = None) -> Any:
        from ..devices.remote import _split_url
        from ..errors import require

        http = require("tritonclient.http", purpose="a remote search target (pip install 'tritonclient[http]')")
        host, ssl = _split_url(self.url)
        t = timeout_s or self.timeout_s
        return http.InferenceServerClient(url=host, ssl=ssl, connection_timeout=t, network_timeout=t)

    @contextlib.contextmanager
    def served(self, artifact: Path, precision: str) -> Iterator[tuple[str, Any]]:
        """Upload ``artifact`` under a fresh name, serve its ``precision`` file there, unload it afterwards; yields
        the served name and the artifact's manifest (checked against its files before they travel)."""
        from ..artifact import load_manifest

        manifest = load_manifest(artifact)
        files = {f"file:{p.relative_to(artifact).as_posix()}": p.read_bytes()
                 for p in sorted(artifact.rglob("*")) if p.is_file() and not p.name.startswith(".")}
        # unique per upload: parallel workers (or a resumed search) never replace each other's model
        name = f"search-{os.getpid()}-{next(self._seq)}-{uuid.uuid4().hex[:6]}"
        config = json.dumps({"backend": self.backend, "parameters": {"precision": {"string_value": precision}}})
        client = self._client(self.timeout_s * 10)
        try:
            try:
                client.load_model(name, headers=self.headers, config=config, files=files)
            except Exception as exc:  # InferenceServerException: the server's message says why
                raise BackendError(
                    f"remote target {self.url} refused to load '{manifest.name}' ({precision}): {exc}"
                    + ("; start the server with --model-control explicit" if "model control is off" in str(exc)
                       else "")
                ) from exc
            try:
                yield name, manifest
            finally:
                with contextlib.suppress(Exception):  # the server removes the upload on unload; best effort
                    client.unload_model(name, headers=self.headers)
        finally:
            client.close()

    def latency(self, artifact: Path, precision: str, cfg: Any) -> dict[str, Any]:
        """``profile --remote`` on the uploaded file: client-side latency (network included) and server compute."""
        from ..devices.remote import profile_remote

        with self.served(artifact, precision) as (name, _):
            return profile_remote(self.url, name, cfg=cfg, token=self.token, timeout_s=self.timeout_s)

    def logits(self, artifact: Path, precision: str, x: np.ndarray, batch: int = 8) -> tuple[np.ndarray, Any]:
        """The uploaded file's outputs on ``x``, sent as KServe v2 requests of up to ``batch`` items."""
        from ..errors import require
        from ..runtime import BACKENDS
        from ..runtime.predictor import select_model

        http = require("tritonclient.http", purpose="a remote search target (pip install 'tritonclient[http]')")
        with self.served(artifact, precision) as (name, manifest):
            # the manifest as this file deploys (its own thresholds), as the local runtime gives it
            mf = select_model(manifest, BACKENDS.get(self.backend), precision)
            client = self._client()
            try:
                meta = client.get_model_metadata(name, headers=self.headers)
                cfg = client.get_model_config(name, headers=self.headers)
                inp, out = meta["inputs"][0], meta["outputs"][0]
                # max_batch_size 0: the model has a fixed batch axis (batch 1 here), one item per request
                step = max(1, min(batch, int(cfg.get("max_batch_size") or 1)))
                parts = []
                for i in range(0, len(x), step):
                    chunk = np.ascontiguousarray(x[i:i + step], dtype=np.float32)
                    req = http.InferInput(inp["name"], list(chunk.shape), inp["datatype"])
                    req.set_data_from_numpy(chunk, binary_data=True)
                    res = client.infer(name, [req], outputs=[http.InferRequestedOutput(out["name"], binary_data=True)],
                                       headers=self.headers)
                    parts.append(res.as_numpy(out["name"]))
            except Exception as exc:
                raise BackendError(f"remote inference on {self.url} ('{manifest.name}' {precision}) failed: {exc}") from exc
            finally:
                client.close()
        return np.concatenate(parts).astype(np.float32), manifest.deployed_as(mf)


Site = LocalSite | RemoteSite


def make_site(target: SearchTarget, threads: int | None) -> Site:
    """Where ``target``'s files are timed and scored: the remote server it names, else this process."""
    if target.url:
        return RemoteSite(target.url, token=target.token, backend=target.backend)
    return LocalSite(target.backend, device=target.device, threads=threads)


def scores(site: Site, artifact: Path, precision: str, split: str, data: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """Outputs of the deployed file on a split, where the target runs it, with the manifest as the file deploys
    (its own calibrated thresholds)."""
    from ..compress.data import split_arrays

    x, y = split_arrays(data, split)
    z, manifest = site.logits(artifact, precision, x)
    return z, y, manifest


def judge(z: np.ndarray, y: np.ndarray, manifest: Any, at_fpr: float) -> dict[str, Any]:
    """A candidate's scores from its file's outputs: top-1, critical FN at the file's thresholds, the mean critical
    FNR at ``at_fpr``, per-class recall."""
    from ..compress.metrics import evaluate
    from ..compress.thresholds import fnr_at_fpr
    from ..runtime.predictor import softmax

    m = evaluate(z, y, manifest.classes, manifest.critical, thresholds=manifest.thresholds or None,
                 rule=manifest.decision_rule)
    probs = softmax(z)
    fnrs = [f for f in (fnr_at_fpr(probs, y, c, at_fpr) for c in manifest.critical) if f is not None]
    return {
        "top1": float(m.accuracy), "critical_fn": m.critical_fn(),
        "critical_fnr_at_fpr": float(np.mean(fnrs)) if fnrs else None,
        "per_class_recall": [pc["recall"] for pc in m.per_class],
        "critical_stats": {str(k): v for k, v in m.critical_stats.items()}, "n": int(m.n),
    }


def require_file(artifact: Path, backend: str, precision: str) -> None:
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
