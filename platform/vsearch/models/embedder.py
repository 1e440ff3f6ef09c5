"""``Embedder``: a network plus its preprocessing, turning decoded images into embeddings."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vsearch.imaging import to_tensor


class Embedder:
    """Embeds ``(H, W, 3) uint8`` images with ``model`` at ``input_size`` px, in eval mode.

    ``embed`` returns ``(n, d) float32``, L2-normalised, in input order.
    """

    def __init__(self, model: nn.Module, input_size: int, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.input_size = input_size
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            out[start : start + len(chunk)] = self.model(to_tensor(chunk, self.input_size)).numpy()
        return out
