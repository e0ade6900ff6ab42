"""Canonical Q/DQ ONNX for deployment: constant weight quantizers folded into INT8 initializers, BatchNorm into conv.

A QAT model exported through NNCF's ONNX symbolics carries its weight fake-quantizers as live
``QuantizeLinear(W_fp32) -> DequantizeLinear`` pairs on float initializers and keeps every ``BatchNormalization``
after its ``Conv`` (the weight is no longer a plain initializer, so the exporter's conv-BN folding does not apply).
Both keep onnxruntime from its INT8 kernels: its QDQ selectors want ``DequantizeLinear(int8 initializer)`` on the
weight and the next ``QuantizeLinear`` right after the conv (its activation), so such a graph runs the convs in
float with extra quantize/dequantize work (measured on EfficientNet-Lite0: 3x slower than FP32). TensorRT's
documentation asks for the same form: quantized weights as INT8 initializers, BN folded before Q/DQ.

:func:`fold_qdq_weights` rewrites, exactly:

- ``DequantizeLinear(QuantizeLinear(W, s, zp), s, zp)`` with a constant ``W`` becomes ``DequantizeLinear(q, s, zp)``
  with ``q = saturate(round_half_even(W / s) + zp)``, which is what ``QuantizeLinear`` computes at run time;
- a ``Conv`` with such a weight, symmetric (zero point 0) and followed only by ``BatchNormalization``, absorbs it:
  with ``k = gamma / sqrt(var + eps)`` per output channel the weight becomes ``q * sign(k)`` with scale
  ``s * |k|`` (per channel, axis 0), and the bias ``(b - mean) * k + beta``. ``W * k`` quantized at ``s * |k|``
  is ``sign(k) * q``: the same integers, so the folded graph computes the unfolded one up to float rounding.
  Only channels with a negative ``k`` flip sign, and a conv where such a channel holds -128 (no INT8 twin) keeps
  its BatchNorm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["fold_qdq_weights"]


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_qdq_weights(model: Any) -> tuple[Any, dict[str, int]]:
    """Fold constant weight quantizers and the BatchNorms after quantized convs; returns ``(model, counts)``.

    ``model`` (an ``onnx.ModelProto``) is changed in place. ``counts`` has ``weights`` (quantizers folded into INT8
    initializers) and ``batchnorms`` (BN nodes folded into their conv). A pattern that does not match exactly
    (shared tensors, asymmetric weights, BN with another consumer) is left as it is.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer: dict[str, Any] = {}
    for n in g.node:
        for o in n.output:
            producer[o] = n
        if n.op_type == "Constant" and len(n.output) == 1:
            v = _attr(n, "value", None)
            if v is not None:
                consts[n.output[0]] = numpy_helper.to_array(v)
    changed = True
    while changed:  # Identity chains of constants (the TorchScript exporter aliases equal parameters)
        changed = False
        for n in g.node:
            if n.op_type == "Identity" and n.input[0] in consts and n.output[0] not in consts:
                consts[n.output[0]] = consts[n.input[0]]
                changed = True
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}

    def used_once(name: str) -> bool:
        return name not in graph_outputs and len(consumers.get(name, ())) == 1

    new_inits: list[Any] = []
    drop: set[int] = set()
    counts = {"weights": 0, "batchnorms": 0}

    def fresh(base: str, arr: np.ndarray) -> str:
        name, i = base, 0
        while name in consts or name in producer:
            i += 1
            name = f"{base}_{i}"
        consts[name] = arr
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in consts or not used_once(q.output[0]):
            continue
        w = consts[q.input[0]].astype(np.float32)
        s_q = consts.get(q.input[1])
        zp_name_q = q.input[2] if len(q.input) > 2 and q.input[2] else None
        zp_name_dq = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        zp_q = consts.get(zp_name_q) if zp_name_q else np.zeros((), np.uint8)
        zp_dq = consts.get(zp_name_dq) if zp_name_dq else np.zeros((), np.uint8)
        s_dq = consts.get(dq.input[1])
        if s_q is None or s_dq is None or zp_q is None or zp_dq is None:
            continue
        axis_q, axis_dq = _attr(q, "axis", 1), _attr(dq, "axis", 1)
        if not (np.array_equal(s_q, s_dq) and np.array_equal(zp_q, zp_dq) and (s_q.ndim == 0 or axis_q == axis_dq)):
            continue
        if s_q.ndim not in (0, 1) or zp_q.dtype not in (np.int8, np.uint8):
            continue
        axis = axis_q % w.ndim if s_q.ndim == 1 else 0
        shape = [1] * w.ndim
        if s_q.ndim == 1:
            shape[axis] = -1
        s_b = s_q.astype(np.float32).reshape(shape)
        zp_b = zp_q.astype(np.int32).reshape(shape)
        info = np.iinfo(zp_q.dtype)
        qi = np.clip(np.rint(w / s_b) + zp_b, info.min, info.max).astype(np.int32)

        conv = consumers.get(dq.output[0], [])
        bn = None
        if (len(conv) == 1 and conv[0].op_type == "Conv" and list(conv[0].input[1:2]) == [dq.output[0]]
                and used_once(dq.output[0]) and not np.any(zp_b) and zp_q.dtype == np.int8
                and (s_q.ndim == 0 or axis == 0)):
            conv = conv[0]
            nxt = consumers.get(conv.output[0], [])
            const_bias = len(conv.input) < 3 or not conv.input[2] or conv.input[2] in consts
            if used_once(conv.output[0]) and nxt[0].op_type == "BatchNormalization" and const_bias \
                    and len(nxt[0].output) == 1 and all(i in consts for i in nxt[0].input[1:5]):
                bn = nxt[0]
        if bn is not None:
            gamma, beta, mean, var = (consts[i].astype(np.float64) for i in bn.input[1:5])
            k = gamma / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
            cout = w.shape[0]
            # -128 has no positive twin: a channel that would flip its sign must not hold one
            if k.shape != (cout,) or np.any(qi[k < 0] == -128):
                bn = None
        if bn is not None:
            sign = np.where(k < 0, -1, 1).astype(np.int32)
            q_new = (qi * sign.reshape([-1] + [1] * (w.ndim - 1))).astype(np.int8)
            s_new = (np.broadcast_to(s_q.astype(np.float64), (cout,)) * np.abs(k)).astype(np.float32)
            bias = consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else 0.0
            b_new = ((bias - mean) * k + beta).astype(np.float32)
            base = q.input[0]
            dq.input[0] = fresh(f"{base}_int8", q_new)
            dq.input[1] = fresh(f"{base}_scale", s_new)
            zp_new = fresh(f"{base}_zero_point", np.zeros(cout, np.int8))
            if len(dq.input) > 2:
                dq.input[2] = zp_new
            else:
                dq.input.append(zp_new)
            for a in list(dq.attribute):
                if a.name == "axis":
                    dq.attribute.remove(a)
            dq.attribute.append(helper.make_attribute("axis", 0))
            b_name = fresh(f"{base}_bias_bn_folded", b_new)
            if len(conv.input) > 2:
                conv.input[2] = b_name
            else:
                conv.input.append(b_name)
            conv.output[0] = bn.output[0]
            drop.add(id(bn))
            counts["batchnorms"] += 1
        else:
            dq.input[0] = fresh(f"{q.input[0]}_quantized", qi.astype(zp_q.dtype))
        drop.add(id(q))
        counts["weights"] += 1

    if not counts["weights"]:
        return model, counts
    kept = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(new_inits)
    _prune_dead(model)
    return model, counts


def _prune_dead(model: Any) -> None:
    """Remove nodes whose outputs nothing uses, then unused initializers (what the folding orphaned)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        kept = [n for n in g.node if any(o in used for o in n.output)]
        if len(kept) == len(g.node):
            break
        del g.node[:]
        g.node.extend(kept)
    used = {i for n in g.node for i in n.input} | outputs
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def signed_activations(model: Any) -> tuple[Any, int]:
    """Turn unsigned symmetric activation Q/DQ pairs (``uint8``, zero point 0) into signed INT8 ones.

    TensorRT's explicit quantization takes only signed INT8 with zero point 0. NNCF quantizes a non-negative
    activation (after a ReLU) symmetrically as ``uint8`` with zero point 0, covering ``[0, 255 s]``; the signed
    form with scale ``255 s / 127`` covers the same range with half the steps, which is what TensorRT itself does
    with non-negative tensors. Asymmetric pairs (zero point != 0) cannot be mapped and are an error.

    Returns:
        ``(model, converted)``: the model, changed in place, and how many zero-point tensors were converted.
    """
    from onnx import numpy_helper

    from ..errors import ExportError

    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp_name, scale_name = node.input[2], node.input[1]
        zp = inits.get(zp_name)
        if zp is None or zp_name in done:
            continue
        z = numpy_helper.to_array(zp)
        if z.dtype != np.uint8:
            continue
        if np.any(z != 0):
            raise ExportError(
                f"{node.name}: an asymmetric uint8 quantizer (zero point {z.ravel()[:3].tolist()}) has no signed INT8"
                " form for TensorRT; quantize with the tensorrt scheme (target: nvidia-gpu or a Jetson)"
            )
        scale = inits.get(scale_name)
        if scale is None:
            raise ExportError(f"{node.name}: the scale {scale_name!r} is not an initializer; cannot rescale it")
        if scale_name not in done:
            s = numpy_helper.to_array(scale).astype(np.float32) * np.float32(255.0 / 127.0)
            scale.CopyFrom(numpy_helper.from_array(s, scale_name))
            done.add(scale_name)
        zp.CopyFrom(numpy_helper.from_array(np.zeros_like(z, dtype=np.int8), zp_name))
        done.add(zp_name)
    # the quantized tensors between the pairs are int8 now: keep the graph's type annotations in step
    from onnx import TensorProto

    signed = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
              and n.input[2] in done}
    for vi in model.graph.value_info:
        if vi.name in signed:
            vi.type.tensor_type.elem_type = TensorProto.INT8
    return model, len(signed)
