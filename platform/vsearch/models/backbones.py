"""The built-in convolutional backbone, in plain torch: trainable end to end.

A stride-2 stem and a few stride-2 residual stages: ``(n, 3, s, s)`` normalised images ->
``(n, widths[-1], s / 2**len(widths), ...)`` feature maps. Sized for CPU training on small inputs
(64 px by default). The heads (localiser, projection, category) live in ``vsearch.models.heads``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from vsearch.models.encoder import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec


class _ResidualStage(nn.Module):
    """Two 3x3 convolutions with batch norm; the first halves the resolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x))


class ConvBackbone(nn.Module):
    """``(n, 3, s, s) float32`` normalised images -> ``(n, C, s / 2**k, s / 2**k) float32``."""

    def __init__(self, spec: EncoderSpec, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(*[_ResidualStage(a, b) for a, b in itertools.pairwise(widths)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _conv(name: str, widths: tuple[int, ...], input_size: int) -> ConvBackbone:
    stride = 2 ** len(widths)
    if input_size % stride:
        raise ValueError(f"{name}: input_size {input_size} must be a multiple of {stride}")
    spec = EncoderSpec(
        name=name,
        backend="torch",
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channels=widths[-1],
        grid=input_size // stride,
        trainable=True,
    )
    return ConvBackbone(spec, widths)


def cnn_tiny(input_size: int = 32, **_: object) -> ConvBackbone:
    """About 10k parameters, 8x downsampling: for tests."""
    return _conv("cnn_tiny", (8, 16, 32), input_size)


def cnn_small(input_size: int = 64, **_: object) -> ConvBackbone:
    """About 1.2M parameters, 16x downsampling: trains in minutes on 2 CPU cores at 64 px."""
    return _conv("cnn_small", (32, 64, 128, 256), input_size)
