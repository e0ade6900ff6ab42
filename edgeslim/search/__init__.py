"""Budget search: the compression of a recipe that meets a latency and a critical-class budget on a target.

``edgeslim search RECIPE --latency-ms 2 --max-critical-fn 3`` (or a ``search:`` recipe section) measures
candidates on the target and fine-tunes the promising ones; see :func:`edgeslim.search.engine.search`.
Light at import: only the config is loaded here; the engine imports Optuna, torch and the runtimes when run.
"""

from __future__ import annotations

from typing import Any

from .config import SearchSection as SearchSection

__all__ = ["SearchSection", "search"]


def search(*args: Any, **kwargs: Any) -> Any:
    """See :func:`edgeslim.search.engine.search`."""
    from .engine import search as _search

    return _search(*args, **kwargs)
