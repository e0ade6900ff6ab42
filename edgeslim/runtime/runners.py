"""What the registered runners declare, as the lookups the other stages use instead of tables of their own.

Export validation asks :func:`runner_for_format` which runner checks a file, the search asks :func:`file_format`
which file a backend runs, the Triton exporter reads :func:`triton_targets`, and the INT8 accuracy control runs its
in-memory models through :func:`from_model`. Each answer is read from the runner classes in
:data:`~edgeslim.runtime.base.BACKENDS` at call time, so a runner added by a plugin is in every answer.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from ..errors import BackendError, ConfigError
from ..registry import did_you_mean
from .base import BACKENDS, Backend, BackendOptions

V = TypeVar("V")


def runners() -> list[type[Backend]]:
    """Every registered runner class, in name order (plugins included)."""
    return [BACKENDS.get(n) for n in BACKENDS.names()]


def formats_of(backend: str) -> tuple[str, ...]:
    """The model formats runner ``backend`` (a name or alias) runs, its own format first."""
    return BACKENDS.get(backend).formats


def file_format(backend: str) -> str:
    """The format of the file runner ``backend`` runs (its first format)."""
    formats = formats_of(backend)
    if not formats:
        raise ConfigError(f"runtime backend '{backend}' declares no model format it runs")
    return formats[0]


def runner_for_format(fmt: str) -> type[Backend]:
    """The runner that runs (and validates) model files of format ``fmt``: the one whose own format (first of
    ``formats``) it is, else the first that lists it; ties go to the first name in order.

    Raises:
        ConfigError: no registered runner runs ``fmt`` (the message lists the formats that have one).
    """
    cls = _format_runners().get(fmt)
    if cls is None:
        known = sorted(_format_runners())
        raise ConfigError(f"no runtime backend runs model format '{fmt}'.{did_you_mean(fmt, known)}"
                          f" Formats with a backend: {', '.join(known) or '(none)'}")
    return cls


def _format_runners() -> dict[str, type[Backend]]:
    out: dict[str, type[Backend]] = {}
    all_runners = runners()
    for cls in all_runners:  # own formats first
        if cls.formats:
            out.setdefault(cls.formats[0], cls)
    for cls in all_runners:
        for fmt in cls.formats[1:]:
            out.setdefault(fmt, cls)
    return out


def runner_for_model(model: object) -> type[Backend]:
    """The runner that runs the in-memory ``model`` (see :meth:`Backend.accepts`).

    Raises:
        BackendError: no registered runner accepts it.
    """
    for cls in runners():
        if cls.accepts(model):
            return cls
    raise BackendError(f"no runtime backend runs a {type(model).__module__}.{type(model).__qualname__} in memory;"
                       f" backends: {', '.join(BACKENDS.names())}")


def from_model(model: object, options: BackendOptions | None = None, **extra: Any) -> Backend:
    """A runner on the in-memory ``model`` (:func:`runner_for_model`); ``extra`` options are looked up per runner
    name: ``from_model(m, onnxruntime={...}, openvino={...})`` passes each runner its own ``options.extra``."""
    cls = runner_for_model(model)
    opts = options or BackendOptions()
    if cls.name in extra:
        opts = BackendOptions(device=opts.device, threads=opts.threads, extra={**opts.extra, **extra[cls.name]})
    return cls.from_model(model, opts)


class DerivedTable(Mapping[str, V], Generic[V]):
    """A read-only mapping computed from the registered runners on each access: the old per-module tables
    (``DEFAULT_BACKENDS``, Triton's ``TARGETS``) keep their name and their ``dict`` reading, and include plugins."""

    def __init__(self, build: Callable[[], Mapping[str, V]], what: str) -> None:
        self._build = build
        self._what = what

    def __getitem__(self, key: str) -> V:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return f"<{self._what}: {dict(self._build())!r}>"


def default_runner_names() -> dict[str, str]:
    """Model format -> the name of the runner that runs it (:func:`runner_for_format`), every format."""
    return {fmt: cls.name for fmt, cls in sorted(_format_runners().items())}


def triton_runners() -> dict[str, type[Backend]]:
    """Model format -> the runner whose format Triton serves (``triton_backend`` set), by format."""
    return {fmt: cls for fmt, cls in sorted(_format_runners().items())
            if cls.triton_backend and fmt == cls.formats[0]}
