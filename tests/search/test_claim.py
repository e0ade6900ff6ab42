"""One worker per candidate: a second process steps aside while the first holds the candidate; a killed holder's
claim is taken over (its checkpoints resume)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgeslim.search.study import _Busy, _claim

HOLD = """
import sys, time
from pathlib import Path
from edgeslim.search.study import _claim
with _claim(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_candidate_is_refused_and_a_killed_holders_claim_is_taken_over(tmp_path):
    trial = tmp_path / "candidates" / "abc"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(trial)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(_Busy, match="abc is being fine-tuned by another process"):
            with _claim(trial):
                pass
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the system releases a killed process's lock
        try:
            with _claim(trial):
                break
        except _Busy:
            assert time.monotonic() < deadline, "the killed holder's claim was never released"
            time.sleep(0.05)
    with _claim(trial):  # released on exit: claimed again at once
        pass
