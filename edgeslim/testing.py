"""Tiny models and data for tests and examples, shipped in the package so anyone can use them.

``TinyNet`` has the same shape of interface as a real backbone (a first conv named ``conv_stem``, depthwise and
pointwise convs, BatchNorm, a ``classifier`` head), trains to useful accuracy on 16x16 digits in seconds on a CPU,
and exports to ONNX and OpenVINO.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A small CNN classifier (about 10k parameters)."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_stem = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=2, padding=1, groups=width, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv_stem(x)))
        x = self.pool(self.blocks(x)).flatten(1)
        return self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)
