"""The system shared-memory extension against a live server, driven by tritonclient's own shared-memory utilities."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import tritonclient.http as httpclient
from server_helpers import batch, live_server
from tritonclient.utils import InferenceServerException

shm = pytest.importorskip("tritonclient.utils.shared_memory")

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs POSIX shared memory in /dev/shm")


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("shm"), [artifact], dynamic_batching=False, shared_memory=True) as s:
        yield s


@pytest.fixture
def regions():
    """Create shared-memory segments (and destroy them after the test): ``make(name, byte_size) -> (handle, key)``."""
    made = []

    def make(name: str, byte_size: int):
        key = f"/edgeslim-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        made.append(handle)
        return handle, key

    yield make
    for h in made:
        shm.destroy_shared_memory_region(h)


def test_inputs_and_outputs_through_shared_memory_match_the_runtime(server, reference, regions):
    c = httpclient.InferenceServerClient(server.url)
    x = batch(2, seed=5)
    expect = reference.infer(x)
    in_h, in_key = regions("in0", x.nbytes)
    out_h, out_key = regions("out0", expect.nbytes + 64)
    shm.set_shared_memory_region(in_h, [x])
    c.register_system_shared_memory("in0", in_key, x.nbytes)
    c.register_system_shared_memory("out0", out_key, expect.nbytes + 64)
    assert {r["name"]: r["key"] for r in c.get_system_shared_memory_status()} == {"in0": in_key, "out0": out_key}
    assert "system_shared_memory" in c.get_server_metadata()["extensions"]

    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory("in0", x.nbytes)
    out = httpclient.InferRequestedOutput("logits", binary_data=True)
    out.set_shared_memory("out0", expect.nbytes)
    res = c.infer("tiny", [inp], outputs=[out])
    entry = res.get_output("logits")
    assert entry["shape"] == list(expect.shape) and entry["parameters"]["shared_memory_region"] == "out0"
    assert "data" not in entry and "binary_data_size" not in entry["parameters"]  # in shared memory, not the body
    got = shm.get_contents_as_numpy(out_h, np.float32, list(expect.shape))
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)

    # the same region again with new contents, and a binary (body) output beside a shared-memory input
    x2 = batch(2, seed=6)
    shm.set_shared_memory_region(in_h, [x2])
    res = c.infer("tiny", [inp], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)])
    np.testing.assert_allclose(res.as_numpy("logits"), reference.infer(x2), rtol=1e-5, atol=1e-5)

    c.unregister_system_shared_memory("in0")
    with pytest.raises(InferenceServerException, match="region 'in0' is not registered") as info:
        c.infer("tiny", [inp])
    assert info.value.status() == "400"
    c.unregister_system_shared_memory()
    assert c.get_system_shared_memory_status() == []


@pytest.mark.parametrize("key, words", [
    ("/edgeslim-test-missing-segment", "no shared-memory segment"),
    ("/../etc/passwd", "is not valid"),
    ("/a/b", "is not valid"),
])
def test_registering_a_bad_key_is_a_clear_400(server, key, words):
    c = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException, match=words) as info:
        c.register_system_shared_memory("bad", key, 64)
    assert info.value.status() == "400"


def test_ranges_and_sizes_are_checked(server, reference, regions):
    c = httpclient.InferenceServerClient(server.url)
    x = batch(1, seed=7)
    h, key = regions("small", x.nbytes)
    shm.set_shared_memory_region(h, [x])
    with pytest.raises(InferenceServerException, match="exceeds the .* bytes of segment"):
        c.register_system_shared_memory("toobig", key, x.nbytes, offset=64)
    c.register_system_shared_memory("small", key, x.nbytes)
    try:
        with pytest.raises(InferenceServerException, match="already registered"):
            c.register_system_shared_memory("small", key, x.nbytes)
        inp = httpclient.InferInput("input", [2, *x.shape[1:]], "FP32")  # two images, one image's bytes
        inp.set_shared_memory("small", x.nbytes)
        with pytest.raises(InferenceServerException, match="needs"):
            c.infer("tiny", [inp])
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory("small", x.nbytes, offset=4)  # runs past the region
        with pytest.raises(InferenceServerException, match="exceeds region 'small'"):
            c.infer("tiny", [inp])
        inp = httpclient.InferInput("input", list(x.shape), "FP32")  # (set_shared_memory keeps an old offset)
        inp.set_shared_memory("small", x.nbytes)
        out = httpclient.InferRequestedOutput("logits")
        out.set_shared_memory("small", 8)  # far too small for the logits
        with pytest.raises(InferenceServerException, match="register a larger region"):
            c.infer("tiny", [inp], outputs=[out])
        # the server is fine afterwards
        res = c.infer("tiny", [inp])
        np.testing.assert_allclose(res.as_numpy("logits"), reference.infer(x), rtol=1e-5, atol=1e-5)
    finally:
        c.unregister_system_shared_memory("small")


def test_off_by_default_with_a_hint(artifact, tmp_path, regions):
    x = batch(1, seed=8)
    h, key = regions("r", x.nbytes)
    with live_server(tmp_path, [artifact]) as s:
        c = httpclient.InferenceServerClient(s.url)
        assert "system_shared_memory" not in c.get_server_metadata()["extensions"]
        assert c.get_system_shared_memory_status() == []
        with pytest.raises(InferenceServerException, match="--shared-memory"):
            c.register_system_shared_memory("r", key, x.nbytes)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory("r", x.nbytes)
        with pytest.raises(InferenceServerException, match="--shared-memory") as info:
            c.infer("tiny", [inp])
        assert info.value.status() == "400"
