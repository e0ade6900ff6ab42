"""A tiny base recipe for budget-search tests: TinyNet on 16x16 digits, digit 8 critical and rare."""

from __future__ import annotations

import copy

import pytest

TINY_BASE = {
    "version": 1,
    "name": "tiny-search",
    "seed": 0,
    "model": {"source": "tiny"},
    "data": {"dataset": "digits", "image_size": 16, "critical": [8], "imbalance": {"8": 0.25}, "batch_size": 64},
    "train": {"epochs": 2, "lr": 0.05, "threads": 1},
    "prune": {"method": "structured", "ratio": 0.5, "round_to": 4},
    "quantize": {"method": "none", "calibration_size": 64},
    "decision": {"target_fnr": 0.1},
    "validate": {"int8_min_agreement": 0.3, "max_extra_critical_fn": 100},
    "search": {"ratios": [0.0, 0.5], "precisions": ["fp32"], "max_top1_drop": 0.5, "trials": 2,
               "fine_tune_epochs": 1, "measure_iterations": 10, "measure_seconds": 0.05, "threads": 1},
}


@pytest.fixture
def tiny_base() -> dict:
    return copy.deepcopy(TINY_BASE)
