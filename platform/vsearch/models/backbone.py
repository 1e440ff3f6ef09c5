"""The built-in convolutional embedder, in plain torch.

A stride-2 stem, a few stride-2 residual stages, global average pooling and a linear projection, returning
L2-normalised embeddings. Sized for CPU training on small inputs (64 px by default).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from vsearch.models.registry import register_model


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


class ConvEmbedder(nn.Module):
    """``(n, 3, s, s) float32`` normalised images -> ``(n, embed_dim) float32``, L2-normalised."""

    def __init__(self, widths: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = [_ResidualStage(a, b) for a, b in itertools.pairwise(widths)]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], embed_dim)
        self.embed_dim = embed_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, ``(n, widths[-1])``."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


@register_model("cnn_tiny")
def cnn_tiny(embed_dim: int = 32) -> ConvEmbedder:
    """About 20k parameters: for tests."""
    return ConvEmbedder((8, 16, 32), embed_dim)


@register_model("cnn_small")
def cnn_small(embed_dim: int = 128) -> ConvEmbedder:
    """About 1.2M parameters: the demo's default, trains in minutes on 2 CPU cores at 64 px."""
    return ConvEmbedder((32, 64, 128, 256), embed_dim)
