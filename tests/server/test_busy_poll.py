"""``busy_poll_us``: the event loop keeps polling for a while after the last request, then really goes idle."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_helpers import batch, live_server

from edgeslim.server.app import BusyPoller

# a live server / real subprocesses: the second step of .ci/run (python -m pytest -m live)
pytestmark = pytest.mark.live


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_poller_runs_for_its_window_after_the_last_request_and_stops_when_one_arrives():
    async def scenario() -> tuple[bool, bool, float]:
        poller = BusyPoller(0.05)
        poller.enter()
        poller.enter()
        poller.leave()
        started_while_busy = poller._task is not None  # one request still in flight: no polling
        poller.leave()
        t0 = time.perf_counter()
        task = poller._task
        poller.enter()  # a request arrives: the poll loop ends at its next round
        await asyncio.sleep(0.01)
        stopped_early = task.done()
        poller.leave()
        await poller._task
        return started_while_busy, stopped_early, time.perf_counter() - t0

    busy, stopped_early, took = asyncio.run(scenario())
    assert not busy and stopped_early
    assert 0.05 <= took < 1.0  # the window restarted at the last leave() and ran to its end


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process CPU time from Linux /proc")
def test_live_server_polls_after_a_request_then_idles(artifact, tmp_path, reference):
    with live_server(tmp_path, [artifact], dynamic_batching=False, busy_poll_us=300_000) as server:
        x = batch(2, seed=1)
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        time.sleep(0.5)
        idle0 = cpu_s(server.proc.pid)
        time.sleep(0.5)
        idle_before = cpu_s(server.proc.pid) - idle0
        r = httpx.post(f"http://{server.url}/v2/models/tiny/infer", json=body, timeout=10)
        assert r.status_code == 200
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, -1), reference.infer(x),
                                   rtol=1e-5, atol=1e-5)
        t0 = cpu_s(server.proc.pid)
        time.sleep(0.6)
        polled = cpu_s(server.proc.pid) - t0  # the 0.3 s window after the request: a core busy
        time.sleep(0.5)
        t1 = cpu_s(server.proc.pid)
        time.sleep(0.5)
        idle_after = cpu_s(server.proc.pid) - t1
    assert polled >= 0.1, f"server used {polled:.3f} s CPU in its 0.3 s poll window"
    assert idle_before < 0.05 and idle_after < 0.05, (idle_before, idle_after)
