"""The budget search's former single module, kept so that its imports keep working.

The search lives in :mod:`edgeslim.search.study` (the Optuna study: objective, duplicates, lock, latency gating,
resume), :mod:`edgeslim.search.candidate` (the typed candidate and its recipe) and :mod:`edgeslim.search.report`
(the front, the prose and the report files); :mod:`edgeslim.search.site` times and scores the files.
"""

from __future__ import annotations

from .report import SearchResult
from .site import judge as _judge
from .site import make_site
from .site import require_file as _raise_if_left_out
from .site import scores as _scores
from .study import (
    _Busy,
    _claim,
    _constraints,
    _Context,
    _drop_refused_ratios,
    _load_data,
    _optuna,
    prepare,
    search,
)

__all__ = ["SearchResult", "search", "prepare", "make_site", "_judge", "_scores", "_load_data", "_raise_if_left_out",
           "_Busy", "_claim", "_Context", "_constraints", "_drop_refused_ratios", "_optuna"]
