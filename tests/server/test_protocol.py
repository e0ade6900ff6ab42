"""The v2 wire format on its own: datatypes, the binary extension, parsing errors, classification strings."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from edgeslim.errors import InputError
from edgeslim.server.errors import BodyTooLargeError
from edgeslim.server.protocol import (
    classify_tensor,
    decode_body,
    deserialize_bytes_tensor,
    encode_infer_response,
    numpy_dtype,
    parse_infer_request,
    serialize_bytes_tensor,
    v2_datatype,
)


def binary_request(arrays: dict[str, np.ndarray], **extra) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for name, a in arrays.items():
        raw = serialize_bytes_tensor(a) if a.dtype == object else a.astype(a.dtype.newbyteorder("<")).tobytes()
        inputs.append({"name": name, "shape": list(a.shape), "datatype": v2_datatype(a.dtype),
                       "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + b"".join(blobs), len(head)


@pytest.mark.parametrize(
    "dtype,name",
    [("bool", "BOOL"), ("uint8", "UINT8"), ("int8", "INT8"), ("int16", "INT16"), ("int32", "INT32"),
     ("int64", "INT64"), ("uint64", "UINT64"), ("float16", "FP16"), ("float32", "FP32"), ("float64", "FP64")],
)
def test_datatype_mapping_round_trips(dtype, name):
    assert v2_datatype(dtype) == name
    assert numpy_dtype(name) == np.dtype(dtype)


def test_unknown_datatype_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown datatype 'FP8'.*FP32"):
        numpy_dtype("FP8")


def test_binary_request_round_trip_for_numbers_and_bytes():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    s = np.array([b"a", b"", "é".encode()], dtype=object)
    body, n = binary_request({"x": x, "s": s})
    req = parse_infer_request(body, str(n))
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.inputs["x"].dtype == np.float32
    assert list(req.inputs["s"]) == [b"a", b"", "é".encode()]


def test_json_request_accepts_flat_and_nested_data_and_echoes_options():
    nested = {"id": "9", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}],
              "outputs": [{"name": "y", "parameters": {"binary_data": True, "classification": 3}}],
              "parameters": {"timeout": 5000}}
    req = parse_infer_request(json.dumps(nested).encode(), None)
    np.testing.assert_array_equal(req.inputs["x"], [[1, 2], [3, 4]])
    assert req.id == "9" and req.timeout_us == 5000
    assert (req.outputs[0].name, req.outputs[0].binary, req.outputs[0].classification) == ("y", True, 3)
    flat = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4.5]}]}
    req = parse_infer_request(json.dumps(flat).encode(), None)
    assert req.inputs["x"].dtype == np.float32 and req.inputs["x"][1, 1] == 4.5 and req.outputs is None


def _x(**kw):
    t = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    t.update(kw)
    return json.dumps({"inputs": [t]}).encode()


@pytest.mark.parametrize(
    "body,header,match",
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (json.dumps({"inputs": []}).encode(), None, "non-empty list"),
        (_x(shape=[3]), None, "has 2 elements but shape \\[3\\] needs 3"),
        (_x(shape=[-1]), None, "non-negative integers"),
        (_x(shape="2"), None, "non-negative integers"),
        (_x(datatype="FLOAT"), None, "unknown datatype"),
        (_x(data=[[1.0], [2.0, 3.0]]), None, "ragged"),
        (_x(data="12"), None, "JSON list"),
        (_x(datatype="INT32", data=[1.5, 2.0]), None, "not valid INT32"),
        (_x(datatype="UINT8", data=[1, 300]), None, "out of range"),
        (_x(data=None), None, "JSON list"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}).encode(), None, "neither"),
        (json.dumps({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}).encode(), None, "string 'name'"),
        (_x(parameters={"shared_memory_region": "r"}), None, "shared-memory"),
        (_x(), "abc", "must be an integer"),
        (_x(), "100000", "body has"),
        (_x(), "0", "body has"),
    ],
)
def test_malformed_requests_raise_input_error_naming_the_problem(body, header, match):
    with pytest.raises(InputError, match=match):
        parse_infer_request(body, header)


def test_binary_byte_counts_must_add_up():
    x = np.zeros((2, 3), np.float32)
    body, n = binary_request({"x": x})
    with pytest.raises(InputError, match="runs past the end"):
        parse_infer_request(body[:-4], str(n))  # truncated tensor
    with pytest.raises(InputError, match="bytes after the last binary input"):
        parse_infer_request(body + b"\0\0", str(n))  # trailing garbage
    head = json.loads(body[:n])
    head["inputs"][0]["parameters"]["binary_data_size"] = 20
    head["inputs"][0]["shape"] = [2, 3]
    h = json.dumps(head).encode()
    with pytest.raises(InputError, match="binary_data_size is 20 bytes but shape \\[2, 3\\] of FP32 needs 24"):
        parse_infer_request(h + b"\0" * 20, str(len(h)))


def test_binary_bytes_elements_are_length_checked():
    good = serialize_bytes_tensor(np.array([b"ab", b"c"], dtype=object))
    assert list(deserialize_bytes_tensor(good, 2, "s")) == [b"ab", b"c"]
    with pytest.raises(InputError, match="runs past the end"):
        deserialize_bytes_tensor(struct.pack("<I", 99) + b"x", 1, "s")
    with pytest.raises(InputError, match="holds 2 elements; its shape needs 3"):
        deserialize_bytes_tensor(good, 3, "s")


def test_classification_strings_follow_triton_score_index_label():
    scores = np.array([[0.1, 2.5, -1.0], [3.0, 0.0, 1.0]], np.float32)
    out = classify_tensor(scores, 2, ["a", "b", "c"])
    assert out.shape == (2, 2)
    assert [x.decode() for x in out[0]] == ["2.500000:1:b", "0.100000:0:a"]
    assert [x.decode() for x in out[1]] == ["3.000000:0:a", "1.000000:2:c"]
    # k is capped at the number of classes; a missing label drops the ':label' part.
    out = classify_tensor(scores[:1], 10, ["a"])
    assert out.shape == (1, 3) and out[0, 0] == b"2.500000:1"


def test_response_binary_outputs_follow_the_json_header():
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, n = encode_infer_response("m", "1", "7", [("y", y, True), ("z", y[:, :1], False)])
    head = json.loads(body[:n])
    assert head["id"] == "7" and head["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert head["outputs"][1]["data"] == [0.0, 3.0]
    np.testing.assert_array_equal(np.frombuffer(body[n:], "<f4").reshape(2, 3), y)
    body, n = encode_infer_response("m", "1", None, [("y", y, False)])
    assert n is None and "id" not in json.loads(body)


def test_compressed_bodies_are_decoded_but_bombs_are_stopped():
    payload = b'{"inputs": []}'
    assert decode_body(gzip.compress(payload), "gzip", 1000) == payload
    assert decode_body(zlib.compress(payload), "deflate", 1000) == payload
    bomb = gzip.compress(b"\0" * 10_000_000)  # ~10 kB that expands to 10 MB
    assert len(bomb) < 20_000
    with pytest.raises(BodyTooLargeError, match="expands beyond the limit of 1000000 bytes"):
        decode_body(bomb, "gzip", 1_000_000)
    with pytest.raises(InputError, match="not valid gzip"):
        decode_body(b"not gzip at all", "gzip", 1000)
    with pytest.raises(InputError, match="truncated"):
        decode_body(gzip.compress(payload)[:-10], "gzip", 1000)
    with pytest.raises(InputError, match="br.*not supported"):
        decode_body(payload, "br", 1000)
