"""The encoder contract: what every image backbone declares, and how images become its input.

A backbone turns a batch of preprocessed images into a feature map. Its ``EncoderSpec`` says how
to preprocess (input side, per-channel mean and std), what comes out (channels, grid side) and
whether it can be trained. The heads (``vsearch.models.heads``) sit on that map; together they make
a ``SearchNetwork``. Backbones are created by name (``vsearch.models.registry``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from vsearch.imaging import to_tensor

#: ImageNet statistics (torch-style normalisation).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Scaling of Keras-style networks (Xception, Inception): ``pixel / 127.5 - 1``.
MINUS_ONE_ONE_MEAN = (0.5, 0.5, 0.5)
MINUS_ONE_ONE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EncoderSpec:
    """What a backbone takes and gives.

    Input: ``(n, 3, input_size, input_size) float32``, RGB in [0, 1] minus ``mean`` over ``std``.
    Output: ``(n, channels, grid, grid) float32`` feature map.
    """

    name: str
    backend: Literal["torch", "onnx"]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int
    grid: int
    #: False for frozen backbones (ONNX): only the heads train, on cached feature maps.
    trainable: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """``(H, W, 3) uint8`` images -> the backbone's input ``(n, 3, s, s) float32``.

        Each image is resized (antialiased bilinear, aspect not kept) to ``input_size``.
        """
        return to_tensor(images, self.input_size, self.mean, self.std)


class Backbone(Protocol):
    """A callable ``(n, 3, s, s) float32 -> (n, C, g, g) float32`` with its ``spec``."""

    spec: EncoderSpec

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def run_backbone(backbone: Backbone, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """``(n, C, g, g) float32`` maps of decoded ``(H, W, 3) uint8`` images through ``backbone``."""
    spec = backbone.spec
    out = np.empty((len(images), spec.channels, spec.grid, spec.grid), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        out[start : start + len(chunk)] = backbone(spec.preprocess(chunk)).numpy()
    return out
