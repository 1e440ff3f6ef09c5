"""``Embedder``: a ``SearchNetwork`` plus its preprocessing, in eval mode, on numpy in and out.

The one place images become embeddings, boxes and category probabilities: the reindex job, the
evaluation and the service all call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vsearch.models.network import SearchNetwork


@dataclass
class Prediction:
    """``embeddings`` ``(n, d) float32`` L2-normalised; ``boxes`` ``(n, 4) float32`` fractions
    ``x0, y0, x1, y1`` of the image side; ``category_probs`` ``(n, c) float32`` (``c = 0``
    without a category head)."""

    embeddings: np.ndarray
    boxes: np.ndarray
    category_probs: np.ndarray


class Embedder:
    """Runs ``network`` on ``(H, W, 3) uint8`` images (or cached feature maps) in batches."""

    def __init__(
        self, network: SearchNetwork, categories: list[str] | None = None, batch_size: int = 32
    ) -> None:
        self.network = network.eval()
        self.spec = network.spec
        self.categories = list(categories or [])
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.network.embed_dim)

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @torch.inference_mode()
    def feature_maps(self, images: list[np.ndarray]) -> np.ndarray:
        """``(n, C, g, g) float32`` backbone maps (what the feature cache stores)."""
        out = np.empty((len(images), self.spec.channels, self.spec.grid, self.spec.grid), "float32")
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            x = self.spec.preprocess(chunk)
            out[start : start + len(chunk)] = self.network.feature_maps(x).numpy()
        return out

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> Prediction:
        """Embeddings, boxes and category probabilities of decoded images, in input order."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            x = self.spec.preprocess(images[start : start + self.batch_size])
            parts.append(self.network(x))
        return self._collect(parts, len(images))

    @torch.inference_mode()
    def predict_maps(self, fmaps: np.ndarray) -> Prediction:
        """The same from backbone maps ``(n, C, g, g)`` (float16 or float32)."""
        parts = []
        for start in range(0, len(fmaps), self.batch_size):
            chunk = torch.from_numpy(np.asarray(fmaps[start : start + self.batch_size]))
            parts.append(self.network.forward_maps(chunk.float()))
        return self._collect(parts, len(fmaps))

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """``(n, d) float32`` L2-normalised embeddings."""
        return self.predict(images).embeddings

    def _collect(self, parts: list, n: int) -> Prediction:
        if not parts:
            c = len(self.categories)
            return Prediction(
                np.zeros((0, self.dim), "float32"), np.zeros((0, 4), "float32"), np.zeros((0, c))
            )
        emb = torch.cat([p.embedding for p in parts]).numpy().astype(np.float32)
        box = torch.cat([p.box for p in parts]).clamp(0, 1).numpy().astype(np.float32)
        logits = torch.cat([p.category_logits for p in parts])
        probs = torch.softmax(logits, dim=1) if logits.shape[1] else logits
        return Prediction(emb, box, probs.numpy().astype(np.float32))
