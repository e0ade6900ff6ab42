"""Child process of test_host_kinds.py: the INT8 export + validation of the shared TinyNet, as a host of another kind
would run it. The parent sets ``ONEDNN_MAX_CPU_ISA`` (and ``ONEDNN_VERBOSE=profile_create``, so oneDNN logs every
primitive it creates with its implementation's ISA) before this process loads oneDNN.

    python host_kind_child.py DATA.npz WEIGHTS.pt TARGET OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _exec_kernels(xml: Path) -> list[str]:
    """primitiveType of every convolution in OpenVINO's execution graph of ``xml`` (compiled as validation does)."""
    import openvino as ov

    from edgeslim.export.validate import VALIDATION_OPTIONS

    config = VALIDATION_OPTIONS["openvino"]["extra"]["config"]
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    kernels = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "GroupConvolution"):
            kernels.append(info["primitiveType"].astype(str))
    return kernels


def main(data_path: str, weights: str, target: str, out_dir: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from edgeslim.export import export_artifact
    from edgeslim.recipe import QuantizeSection, ValidateSection
    from edgeslim.testing import TinyNet
    from export_testlib import tiny_manifest

    d = np.load(data_path)
    model = TinyNet(num_classes=10)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    out = Path(out_dir)
    # OpenVINO only: onnxruntime's MLAS chooses its INT8 kernels from CPUID, which no variable caps
    m = export_artifact(model, out / "a", tiny_manifest(), formats=("openvino",), precisions=("fp32", "int8"),
                        calibration=[d["train_x"][i : i + 16] for i in range(0, 32, 16)],
                        quantize_cfg=QuantizeSection(calibration_size=32), target=target,
                        validation=(d["test_x"], d["test_y"]), val_split=(d["val_x"], d["val_y"]),
                        validate_cfg=ValidateSection(int8_min_agreement=0.85))
    int8 = m.model("openvino", "int8")
    result = {
        "validation": m.validation,
        "models": [[f.format, f.precision] for f in m.models],
        "int8_scheme": int8.extra.get("int8_scheme") if int8 else None,
        "exec_kernels": _exec_kernels(out / "a" / int8.path) if int8 else [],
    }
    (out / "result.json").write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:5])
