"""Compression: pretrained sources, data, the class-dependent loss, pruning, fine-tuning and quantization."""
