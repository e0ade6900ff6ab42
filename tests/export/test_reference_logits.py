"""The export compares every file with torch logits the caller already has (the pipeline's, computed once per
model and split) instead of running the model over val and test again; wrong-shaped ones are recomputed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeslim.export import export_artifact
from export_testlib import tiny_manifest

torch.set_num_threads(1)


def _export(trained, directory, **kw):
    val = (trained.train_x[1000:1200], trained.train_y[1000:1200])
    return export_artifact(trained.model, directory, tiny_manifest(), formats=("onnx",), precisions=("fp32",),
                           validation=(trained.test_x, trained.test_y), val_split=val, **kw), val


def _report(m) -> dict:
    v = m.validation
    return {"reference": v["reference"], "val": v["val"],
            **{p: {k: f[k] for k in ("max_abs_diff", "top1_agreement", "critical_fn", "passed")}
               for p, f in v["models"].items()}}


def test_given_logits_are_what_every_file_is_compared_with(trained, tmp_path):
    computed, val = _export(trained, tmp_path / "computed")
    known = {"test": trained.reference(trained.test_x), "val": trained.reference(val[0])}
    given, _ = _export(trained, tmp_path / "given", reference_logits=known)
    assert _report(given) == _report(computed)
    ref = given.model("onnx", "fp32").extra["field_reference"]
    assert ref == computed.model("onnx", "fp32").extra["field_reference"]

    # they are used, not recomputed: a shift of every logit (no decision changes) shows in the file's difference
    shifted = {k: v + 0.01 for k, v in known.items()}
    m, _ = _export(trained, tmp_path / "shifted", reference_logits=shifted)
    assert m.validation["models"]["model.onnx"]["max_abs_diff"] == pytest.approx(0.01, abs=2e-3)
    # logits of another split's length are not taken for this one: computed again
    wrong = {"test": known["val"], "val": known["test"]}
    m, _ = _export(trained, tmp_path / "wrong", reference_logits=wrong)
    assert _report(m) == _report(computed)
    assert np.shape(known["test"]) != np.shape(known["val"])
