"""The on-device inference server (KServe v2 / Open Inference Protocol)."""
