"""The one registry primitive behind every extension point.

Pretrained sources, datasets, pruning methods, exporters, runtime backends and device targets each own a
:class:`Registry`. Adding an entry is one decorated function or class; registering a name twice is an error;
an unknown name lists the known ones and the closest match. A registry declared below the stages that fill it
names their modules (``plugins``), imported on its first lookup, so a lower layer can look names up without
importing a stage.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError, UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``known``, or an empty string."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A name -> object mapping for one kind of extension.

    Args:
        kind: what the entries are, used in error messages (e.g. ``"runtime backend"``).
        plugins: modules imported on the first lookup, which register the entries (registering imports nothing).
    """

    def __init__(self, kind: str, *, plugins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._plugins = tuple(plugins)

    def _load(self) -> None:
        if self._plugins:
            plugins, self._plugins = self._plugins, ()
            for module in plugins:
                importlib.import_module(module)

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(o: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ConfigError(f"{self.kind} '{key}' is registered twice")
            self._entries[name] = o
            for alias in aliases:
                self._aliases[alias] = name
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove ``name`` (and its aliases) and return its entry; for tests that register a temporary entry."""
        canonical = self.canonical(name)
        self._aliases = {a: n for a, n in self._aliases.items() if n != canonical}
        return self._entries.pop(canonical)

    def canonical(self, name: str) -> str:
        """Resolve an alias to its registered name, or raise :class:`UnknownNameError`."""
        self._load()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted(self._entries)
        raise UnknownNameError(
            f"unknown {self.kind} '{name}'.{did_you_mean(name, known + sorted(self._aliases))}"
            f" Known: {', '.join(known) or '(none)'}"
        )

    def get(self, name: str) -> T:
        """Return the entry for ``name`` (or an alias)."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """The registered names, sorted (aliases excluded)."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
